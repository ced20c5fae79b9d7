"""Process groups and Megatron parallel state, from torchrun's environment.

``init_distributed(tp, pp, seed)`` is the one entry point: it starts torch.distributed (nccl with
CUDA, gloo without; a world of one when not launched by torchrun), applies the CPU shims only when
CUDA is absent, builds Megatron's tensor/pipeline/data-parallel groups and seeds every RNG.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelInfo:
    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    device: torch.device

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def comm_device() -> torch.device:
    """Where tensors handed to collectives live: the current CUDA device (nccl), else the CPU (gloo)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(tp: int = 1, pp: int = 1, seed: int = 1234, timeout_s: int = 600) -> ParallelInfo:
    """Initialise torch.distributed and Megatron's parallel state; idempotent for the same layout."""
    from megatron.core import parallel_state as ps

    cuda = torch.cuda.is_available()
    if not cuda:
        from megatron_vopd.runtime.cpu_shims import apply_cpu_shims

        apply_cpu_shims()
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # a plain `python` process: a world of one
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s), device_id=device)
    world = dist.get_world_size()
    if world % (tp * pp):
        raise ValueError(
            f"world size {world} is not divisible by parallel.tensor_model_parallel_size={tp} x "
            f"parallel.pipeline_model_parallel_size={pp}")
    if ps.model_parallel_is_initialized():
        if (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()) != (tp, pp):
            ps.destroy_model_parallel()
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    seed_everything(seed)
    return parallel_info()


def parallel_info() -> ParallelInfo:
    from megatron.core import parallel_state as ps

    return ParallelInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(), tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(), pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
        device=torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"),
    )


def seed_everything(seed: int) -> None:
    """Seed python-side torch identically on every rank and Megatron's model-parallel RNG per TP rank.

    The same ``torch.manual_seed`` on every rank matters on the CPU: initialisation on the CPU
    draws the full weight and then keeps this rank's shard, so every rank must draw the same."""
    import random

    from megatron.core import tensor_parallel

    random.seed(seed)
    torch.manual_seed(seed)
    # On the CPU the tracker behind this call is the shim's CpuRNGStatesTracker.
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def log_rank0(msg: str) -> None:
    """Print ``msg`` once per job: on global rank 0 (or in a process without torch.distributed)."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(msg, flush=True)
