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
    "cuda_tensor_type_names",
    "fused_adam",
    "fla_gated_delta_rule",
    "recompute_rng",
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


_modes: list[TorchFunctionMode] = []  # the shims' modes, kept on the mode stack for the life of the process


def _enter_for_good(mode: TorchFunctionMode) -> None:
    mode.__enter__()
    _modes.append(mode)


def _shim_cuda_tensors_on_cpu():
    _enter_for_good(CudaToCpuMode())


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


_CUDA_TYPE_NAMES = {f"torch.{t}Tensor": f"torch.cuda.{t}Tensor" for t in ("Float", "BFloat16", "Half")}


class CudaTypeNamesMode(TorchFunctionMode):
    """Why: Megatron's mixed-precision and distributed optimizers and its gradient clipping sort
    parameters by ``param.type()`` and accept only ``'torch.cuda.{Float,BFloat16,Half}Tensor'``
    ("Wrapped parameters must be one of torch.cuda.FloatTensor, ..."). Without CUDA every tensor
    lives on the CPU, so ``Tensor.type()`` (no arguments: the query form) reports the CUDA name of
    the same dtype. Conversions (``t.type(torch.float16)``) and everything else are untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        return func(*args, **kwargs)


def _shim_cuda_tensor_type_names():
    _enter_for_good(CudaTypeNamesMode())


class CpuFusedAdam(torch.optim.Optimizer):
    """Adam/AdamW with the interface and state layout of TE's / apex's ``FusedAdam``, in plain torch.

    Why: without TE or apex megatron-core falls back to ``torch.optim.AdamW``, which keeps a
    per-parameter ``step`` tensor in its state; the distributed optimizer's checkpoint code expects
    FusedAdam's layout (the step in the parameter group, only ``exp_avg``/``exp_avg_sq`` per
    parameter) and fails to load its own checkpoint (``KeyError: 'step'``). The update is FusedAdam's
    (= torch AdamW's) with bias correction: ``p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)`` in
    AdamW mode (decoupled decay), ``g += wd * p`` before the moments otherwise.
    """

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, adam_w_mode=True,
                 weight_decay=0.0, amsgrad=False, **_ignored):
        if amsgrad:
            raise ValueError("CpuFusedAdam does not implement amsgrad (neither does FusedAdam)")
        super().__init__(params, dict(lr=lr, bias_correction=bias_correction, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))
        self.adam_w_mode = adam_w_mode

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            if not group["params"]:
                continue  # as FusedAdam: an empty group does not count steps
            group["step"] = group.get("step", 0) + 1
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            (b1, b2), lr, wd, step = group["betas"], group["lr"], group["weight_decay"], group["step"]
            grads = [p.grad for p in params]
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
            exp_avg = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
            if wd and not self.adam_w_mode:
                grads = torch._foreach_add(grads, params, alpha=wd)
            torch._foreach_lerp_(exp_avg, grads, 1 - b1)
            torch._foreach_mul_(exp_avg_sq, b2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - b2)
            bc1, bc2 = (1 - b1**step, 1 - b2**step) if group["bias_correction"] else (1.0, 1.0)
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denom, bc2**0.5)
            torch._foreach_add_(denom, group["eps"])
            if wd and self.adam_w_mode:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_addcdiv_(params, exp_avg, denom, value=-lr / bc1)
        return loss


def _shim_fused_adam():
    from megatron.core import optimizer as megatron_optimizer
    from megatron.core.optimizer import distrib_optimizer

    megatron_optimizer.Adam = CpuFusedAdam
    megatron_optimizer.USING_PYTORCH_OPTIMIZER = False  # build it with FusedAdam's arguments (adam_w_mode)
    distrib_optimizer.Adam = CpuFusedAdam
    # the distributed optimizer's state_dict then reads the step from the parameter groups, as for apex
    distrib_optimizer.HAVE_APEX_OR_TE, distrib_optimizer.USING_APEX_OPTIMIZER = True, True


def _shim_fla_gated_delta_rule():
    """Why: megatron-core's ``GatedDeltaNet`` (the linear-attention layers of Qwen3.5) takes ``l2norm``
    and ``chunk_gated_delta_rule`` from fla (flash-linear-attention: Triton kernels, CUDA only) and
    refuses to build without them. Both come here from transformers' torch reference of the same two
    functions (same arguments, [batch, seq, heads, dim] layout; transformers' Qwen3.5 computes with
    them on CPU). Only megatron-core's module sees them: no fake ``fla`` package is installed, so
    transformers and vLLM keep their own checks."""
    from megatron.core.ssm import gated_delta_net
    from transformers.models.qwen3_5.modeling_qwen3_5 import l2norm, torch_chunk_gated_delta_rule

    gated_delta_net.l2norm = l2norm
    gated_delta_net.chunk_gated_delta_rule = torch_chunk_gated_delta_rule
    gated_delta_net.HAVE_FLA = True


def _shim_recompute_rng():
    """Why: activation recompute (``model.recompute``: megatron-core's ``CheckpointFunction``) saves and
    restores the CPU generator, the CUDA generator (``torch.cuda.get_rng_state``, which does not exist
    without CUDA) and the model-parallel tracker around every recomputed layer. Without CUDA there is no
    CUDA generator to save: its state is None and restoring None does nothing; the CPU generator and
    the tracker (``CpuRNGStatesTracker``) are still saved and restored by megatron-core itself. The
    recomputation runs inside ``Tensor.backward``, where torch has the shims' function modes switched
    off (a mode is inactive while it handles a call): the recomputed layers get them back."""
    from megatron.core.tensor_parallel import random

    get_state, set_state = random._get_cuda_rng_state, random._set_cuda_rng_state
    random._get_cuda_rng_state = lambda *a, **k: None if not torch.cuda.is_available() else get_state(*a, **k)
    random._set_cuda_rng_state = lambda state, *a, **k: None if state is None else set_state(state, *a, **k)
    backward = random.CheckpointFunction.backward

    def recompute_with_modes(ctx, *grads):
        with contextlib.ExitStack() as modes:
            for mode in _modes:
                modes.enter_context(mode)
            return backward(ctx, *grads)

    random.CheckpointFunction.backward = staticmethod(recompute_with_modes)


_SHIMS = {
    "cpu_rng_tracker": _shim_cpu_rng_tracker,
    "current_device_is_cpu": _shim_current_device_is_cpu,
    "cuda_tensors_on_cpu": _shim_cuda_tensors_on_cpu,
    "cuda_sync_and_streams": _shim_cuda_sync_and_streams,
    "cuda_tensor_type_names": _shim_cuda_tensor_type_names,
    "fused_adam": _shim_fused_adam,
    "fla_gated_delta_rule": _shim_fla_gated_delta_rule,
    "recompute_rng": _shim_recompute_rng,
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
