"""The one place an engine is made: ``build_engine`` (from ``rollout.*``) and ``start_engine`` (export
the policy as it is now, then start an engine from that folder).

``rollout.engine`` names the engine class; an unknown name is refused naming the key. An engine
starts from a Hugging Face folder on disk (weights, config.json, processor files) and from then on
follows the policy through ``weight_sync.sync_weights``.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from megatron_vopd.architecture import architecture
from megatron_vopd.bridge.export import save_hf_weights
from megatron_vopd.bridge.table import MappingTable
from megatron_vopd.config import ConfigError
from megatron_vopd.rollout.engine import RolloutEngine


def _vllm(rollout, model_dir: str, **overrides) -> RolloutEngine:
    from megatron_vopd.rollout.vllm_engine import VLLMEngine

    kwargs = dict(dtype=rollout.dtype, max_model_len=rollout.max_model_len,
                  tensor_parallel_size=rollout.tensor_parallel_size,
                  gpu_memory_utilization=rollout.gpu_memory_utilization,
                  cpu_kvcache_space_gib=rollout.cpu_kvcache_space_gib, seed=rollout.seed)
    return VLLMEngine(model_dir, **{**kwargs, **overrides})


ENGINES = {"vllm": _vllm}  # rollout.engine -> maker(rollout_cfg, model_dir, **overrides)


def build_engine(rollout, model_dir: str | Path, **overrides) -> RolloutEngine:
    """The engine ``rollout.engine`` names, configured from ``rollout`` (a RolloutConfig), not started.
    ``overrides`` replace single settings (e.g. ``dtype``)."""
    if rollout.engine not in ENGINES:
        raise ConfigError(f"rollout.engine={rollout.engine!r} is not a known engine; known: {', '.join(sorted(ENGINES))}")
    return ENGINES[rollout.engine](rollout, str(model_dir), **overrides)


def start_engine(model, model_cfg, rollout, folder: str | Path, *, min_pixels: int | None = None,
                 max_pixels: int | None = None, **overrides) -> RolloutEngine | None:
    """Collective over the model-parallel group: write the model's weights as they are now into
    ``folder`` (HF format, streamed by the bridge) with its family's processor files (pixel limits:
    ``data.min_pixels`` / ``data.max_pixels``), then build and start the engine on global rank 0.
    Returns the started engine there, None on every other rank."""
    folder = Path(folder)
    save_hf_weights(model, MappingTable.for_config(model_cfg), model_cfg, folder)
    engine = None
    if dist.get_rank() == 0:
        architecture(model_cfg.arch).save_processor(folder, min_pixels=min_pixels, max_pixels=max_pixels)
        engine = build_engine(rollout, folder, **overrides)
        engine.start()
    dist.barrier()
    return engine
