"""Distribution of Megatron parameters: TP split/gather and PP ownership, for any TP x PP layout.

This module knows nothing of Hugging Face names or fused formats. It moves between

* a **full** state dict: Megatron names with *global* layer numbers, whole (unsharded) tensors, and
* the **local** parameters of the pipeline stage and TP rank this process holds,

asking the mapping table only how each parameter is split over TP (``Mapping.shard`` / ``unshard``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.distributed as dist

from megatron_vopd.bridge.table import MappingTable

_LAYER = re.compile(r"(decoder\.layers\.)(\d+)\.")


def layer_offset(model) -> int:
    """Global index of this pipeline stage's first decoder layer."""
    from megatron.core import parallel_state as ps

    layers_per_stage = model.config.num_layers // ps.get_pipeline_model_parallel_world_size()
    return ps.get_pipeline_model_parallel_rank() * layers_per_stage


def to_global_name(name: str, offset: int) -> str:
    """``...decoder.layers.<local>...`` -> ``...decoder.layers.<local + offset>...``."""
    return _LAYER.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + offset}.", name, count=1)


def local_parameters(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(global name, local tensor) for every parameter of this pipeline stage."""
    offset = layer_offset(model)
    for name, param in model.named_parameters():
        yield to_global_name(name, offset), param


@torch.no_grad()
def load_sharded(model, table: MappingTable, full_tensor: Callable[[str], torch.Tensor]) -> None:
    """Fill every local parameter with its TP shard of ``full_tensor(global_name)``.

    ``full_tensor`` is asked only for the parameters this rank holds, so a stage reads only its layers."""
    from megatron.core import parallel_state as ps

    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    for global_name, param in local_parameters(model):
        full = full_tensor(global_name)
        piece = table.megatron(global_name).shard(full, tp_rank, tp_size)
        if piece.shape != param.shape:
            raise ValueError(f"{global_name}: a full tensor of shape {tuple(full.shape)} gives a shard of "
                             f"{tuple(piece.shape)} at TP rank {tp_rank} of {tp_size}; the model expects {tuple(param.shape)}")
        param.copy_(piece)


def load_full_state_dict(model, table: MappingTable, full: Mapping[str, torch.Tensor]) -> None:
    """Copy this rank's shards of ``full`` (global Megatron names, whole tensors) into the model."""
    missing = [g for g, _ in local_parameters(model) if g not in full]
    if missing:
        raise KeyError(f"{len(missing)} parameters missing from the state dict: {', '.join(missing[:10])}"
                       + (" ..." if len(missing) > 10 else ""))
    load_sharded(model, table, full.__getitem__)


@torch.no_grad()
def iter_full_parameters(model, table: MappingTable) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (global Megatron name, full tensor) for the whole model, one parameter at a time.

    Collective: every rank of the model-parallel group must call it and consume it to the end. TP
    shards are all-gathered; each pipeline stage's tensors are broadcast from that stage, so every
    rank yields the whole model in stage order without holding more than one full tensor."""
    from megatron.core import parallel_state as ps

    tp_group, pp_group = ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group()
    tp_size, pp_size = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    pp_rank, pp_ranks = ps.get_pipeline_model_parallel_rank(), dist.get_process_group_ranks(pp_group)
    local = list(local_parameters(model))
    device = local[0][1].device if local else torch.device("cpu")
    for stage in range(pp_size):
        meta = [[(g, table.megatron(g).full_shape(p.shape, tp_size), p.dtype) for g, p in local]] \
            if stage == pp_rank else [None]
        if pp_size > 1:  # announce this stage's names and shapes
            dist.broadcast_object_list(meta, src=pp_ranks[stage], group=pp_group)
        for i, (global_name, shape, dtype) in enumerate(meta[0]):
            mapping = table.megatron(global_name)
            if stage == pp_rank:
                param = local[i][1].detach()
                if tp_size > 1 and mapping.tp_dim is not None:
                    shards = [torch.empty_like(param) for _ in range(tp_size)]
                    dist.all_gather(shards, param.contiguous(), group=tp_group)
                    full = mapping.unshard(shards)
                else:
                    full = param
            else:
                full = torch.empty(shape, dtype=dtype, device=device)
            if pp_size > 1:
                dist.broadcast(full, src=pp_ranks[stage], group=pp_group)
            yield global_name, full
