"""CPU shims for megatron-core: what it takes to run the real library on gloo without CUDA.

megatron-core assumes CUDA in a handful of places that have nothing to do with the maths. Each shim
below names one such place, says why it is needed and replaces only that. They are applied by
``apply_cpu_shims()``, which refuses to run when CUDA is available: on a GPU machine megatron-core
runs untouched. ``tests/test_cpu_shims.py`` shows, per shim, the failure without it and the fix with it.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

SHIM_NAMES = (
    "cpu_rng_tracker",
    "current_device_is_cpu",
    "cuda_tensors_on_cpu",
    "cuda_sync_and_streams",
)
_applied: list[str] = []


class CpuRNGStatesTracker:
    """Megatron's model-parallel RNG tracker, on the CPU generator.

    Why: ``model_parallel_cuda_manual_seed`` and ``CudaRNGStatesTracker`` read and write the CUDA
    generator (``torch.cuda.get_rng_state``), which does not exist without CUDA; attention forks the
    tracker on every forward, training or not. This tracker keeps named CPU generator states and
    forks them the same way, so dropout and TP-sharded initialisation stay reproducible per rank.
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._is_initialized = False

    def is_initialized(self):
        return self._is_initialized

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name, seed):
        if seed in self.seeds_:
            raise RuntimeError(f"rng seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def _shim_cpu_rng_tracker():
    from megatron.core.tensor_parallel import random as mp_random

    mp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def _shim_current_device_is_cpu():
    """Why: buffers and communication scratch tensors are allocated with
    ``device=torch.cuda.current_device()`` (mappings, layers, p2p, the mrope ``inv_freq`` buffer),
    which raises without CUDA. Answer "cpu" instead."""
    torch.cuda.current_device = lambda: "cpu"


class CudaToCpuMode(TorchFunctionMode):
    """Why: a few places create tensors with a literal ``device="cuda"`` (the default causal mask,
    the pipeline schedules' token counter) or call ``.cuda()``. Map those to the CPU."""

    @staticmethod
    def _is_cuda(device) -> bool:
        if isinstance(device, torch.device):
            return device.type == "cuda"
        return isinstance(device, str) and device.startswith("cuda")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs and self._is_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


_cuda_to_cpu_mode: CudaToCpuMode | None = None


def _shim_cuda_tensors_on_cpu():
    global _cuda_to_cpu_mode
    _cuda_to_cpu_mode = CudaToCpuMode()
    _cuda_to_cpu_mode.__enter__()  # stays on the mode stack for the life of the process


class _NullStream:
    def wait_stream(self, *_):
        pass

    def record_event(self, *_):
        pass

    def synchronize(self):
        pass


def _shim_cuda_sync_and_streams():
    """Why: pipeline p2p calls ``torch.cuda.synchronize()`` after every exchange and DDP asks for
    ``torch.cuda.current_stream()``; on the CPU gloo ops are already synchronous."""
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_stream = lambda *a, **k: _NullStream()


_SHIMS = {
    "cpu_rng_tracker": _shim_cpu_rng_tracker,
    "current_device_is_cpu": _shim_current_device_is_cpu,
    "cuda_tensors_on_cpu": _shim_cuda_tensors_on_cpu,
    "cuda_sync_and_streams": _shim_cuda_sync_and_streams,
}


def apply_cpu_shims(names=SHIM_NAMES) -> list[str]:
    """Apply the named shims once per process; returns those applied so far. Refuses with CUDA."""
    if torch.cuda.is_available():
        raise RuntimeError("CPU shims must not be applied when CUDA is available")
    for name in names:
        if name not in _SHIMS:
            raise KeyError(f"unknown CPU shim {name!r}; known: {', '.join(SHIM_NAMES)}")
        if name not in _applied:
            _SHIMS[name]()
            _applied.append(name)
    return list(_applied)


def applied_shims() -> list[str]:
    return list(_applied)
