"""Distribution of Megatron parameters: TP split/gather and PP ownership, for any TP x PP layout.

This module knows nothing of Hugging Face names or fused formats. It moves between

* a **full** state dict: Megatron names with *global* layer numbers, whole (unsharded) tensors, and
* the **local** parameters of the pipeline stage and TP rank this process holds.

A parameter is TP-sharded when Megatron marks it ``tensor_model_parallel`` (along its
``partition_dim``). The one layout rule beyond a plain chunk: the gated MLP's ``linear_fc1`` holds
[gate; up] and each TP rank keeps [gate shard; up shard].
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import torch
import torch.distributed as dist

_LAYER = re.compile(r"(decoder\.layers\.)(\d+)\.")


def layer_offset(model) -> int:
    """Global index of this pipeline stage's first decoder layer."""
    from megatron.core import parallel_state as ps

    layers_per_stage = model.config.num_layers // ps.get_pipeline_model_parallel_world_size()
    return ps.get_pipeline_model_parallel_rank() * layers_per_stage


def to_global_name(name: str, offset: int) -> str:
    """``...decoder.layers.<local>...`` -> ``...decoder.layers.<local + offset>...``."""
    return _LAYER.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + offset}.", name, count=1)


def full_shape(param: torch.Tensor, tp_size: int) -> tuple[int, ...]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp_size
    return tuple(shape)


def _is_gated_fc1(name: str, model) -> bool:
    return name.endswith("mlp.linear_fc1.weight") and model.config.gated_linear_unit


def shard(name: str, full: torch.Tensor, param: torch.Tensor, model, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's shard of the full tensor ``full`` for the local parameter ``param``."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim = param.partition_dim
    if _is_gated_fc1(name, model):
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(tp_size, dim=dim)[tp_rank], up.chunk(tp_size, dim=dim)[tp_rank]], dim=dim)
    return full.chunk(tp_size, dim=dim)[tp_rank]


def unshard(name: str, shards: list[torch.Tensor], param: torch.Tensor, model) -> torch.Tensor:
    """The full tensor from the TP shards of ``param`` (inverse of ``shard``)."""
    if not getattr(param, "tensor_model_parallel", False) or len(shards) == 1:
        return shards[0]
    dim = param.partition_dim
    if _is_gated_fc1(name, model):
        halves = [s.chunk(2, dim=dim) for s in shards]
        return torch.cat([torch.cat([h[0] for h in halves], dim=dim), torch.cat([h[1] for h in halves], dim=dim)], dim=dim)
    return torch.cat(shards, dim=dim)


def local_parameters(model) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(local name, global name, tensor) for every parameter of this stage (and persistent buffers
    are not included: Megatron keeps none that a checkpoint needs for these models)."""
    offset = layer_offset(model)
    for name, param in model.named_parameters():
        yield name, to_global_name(name, offset), param


@torch.no_grad()
def load_full_state_dict(model, full: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
    """Copy this rank's shards of ``full`` (global names, whole tensors) into the local model."""
    from megatron.core import parallel_state as ps

    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    missing = []
    for name, global_name, param in local_parameters(model):
        if global_name not in full:
            missing.append(global_name)
            continue
        piece = shard(name, full[global_name], param, model, tp_rank, tp_size)
        if piece.shape != param.shape:
            raise ValueError(f"{global_name}: the full tensor of shape {tuple(full[global_name].shape)} gives a "
                             f"shard of {tuple(piece.shape)} at TP rank {tp_rank}/{tp_size}; the model expects {tuple(param.shape)}")
        param.copy_(piece)
    if strict and missing:
        raise KeyError(f"{len(missing)} parameters missing from the state dict: {', '.join(missing[:10])}"
                       + (" ..." if len(missing) > 10 else ""))


@torch.no_grad()
def iter_full_parameters(model) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (global name, full tensor) for the whole model, one parameter at a time.

    Collective: every rank of the model-parallel group must call it and consume it to the end. TP
    shards are all-gathered; each pipeline stage's tensors are broadcast from the stage's TP rank 0
    so every rank yields the whole model in stage order without ever holding all of it at once."""
    from megatron.core import parallel_state as ps

    tp_group, pp_group = ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group()
    tp_size, pp_size = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    pp_rank = ps.get_pipeline_model_parallel_rank()
    pp_ranks = dist.get_process_group_ranks(pp_group)
    local = [(g, n, p) for n, g, p in local_parameters(model)]
    for stage in range(pp_size):
        # Announce the names and shapes of this stage, then send the tensors one by one.
        meta = [[(g, full_shape(p, tp_size), p.dtype) for g, n, p in local]] \
            if stage == pp_rank else [None]
        if pp_size > 1:
            dist.broadcast_object_list(meta, src=pp_ranks[stage], group=pp_group)
        for i, (global_name, shape, dtype) in enumerate(meta[0]):
            if stage == pp_rank:
                _, name, param = local[i]
                if tp_size > 1 and getattr(param, "tensor_model_parallel", False):
                    shards = [torch.empty_like(param) for _ in range(tp_size)]
                    dist.all_gather(shards, param.contiguous(), group=tp_group)
                    full = unshard(name, shards, param, model)
                else:
                    full = param.detach()
            else:
                full = torch.empty(shape, dtype=dtype, device=local[0][2].device if local else "cpu")
            if pp_size > 1:
                dist.broadcast(full, src=pp_ranks[stage], group=pp_group)
            yield global_name, full
