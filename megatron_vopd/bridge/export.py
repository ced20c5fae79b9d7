"""The streaming export of a live, sharded Megatron model as Hugging Face tensors.

``export_hf(model, table, cfg)`` yields ``(hf_name, tensor)`` for the whole model: TP shards are
gathered and each tensor comes from the pipeline stage that owns it (``distribution.py``), then the
mapping turns it into HF format (``mappings.py``). At most one parameter is materialised at a time.
Conversion to a HF folder and the rollout weight sync both consume exactly this stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_vopd.bridge.distribution import iter_full_parameters
from megatron_vopd.bridge.hf_config import hf_config
from megatron_vopd.bridge.hf_io import ShardedSafetensorsWriter
from megatron_vopd.bridge.table import MappingTable


def export_hf(model, table: MappingTable, cfg, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Collective over the model-parallel group; every rank gets the whole stream. ``dtype`` (the engine's,
    for weight sync) casts every tensor but those the engine keeps in fp32 (``Mapping.engine_fp32``)."""
    for name, full in iter_full_parameters(model, table):
        mapping = table.megatron(name)
        if not mapping.export:
            continue
        cast = dtype is not None and not mapping.engine_fp32
        for hf_name, tensor in mapping.to_hf(full, cfg).items():
            yield hf_name, tensor.to(dtype) if cast else tensor


def save_hf_weights(model, table: MappingTable, cfg, out: str | Path, *, shard_bytes: int = 2 * 1024**3) -> int:
    """Collective: write the model's weights (safetensors shards + index) and config.json into
    ``out`` on global rank 0, one tensor in memory at a time. Returns the bytes written (0 elsewhere)."""
    rank0 = dist.get_rank() == 0
    writer = ShardedSafetensorsWriter(out, shard_bytes) if rank0 else None
    for name, tensor in export_hf(model, table, cfg):
        if rank0:
            writer.add(name, tensor)
    if not rank0:
        return 0
    writer.close()
    hf_config(cfg).save_pretrained(out)
    return writer.total_bytes
