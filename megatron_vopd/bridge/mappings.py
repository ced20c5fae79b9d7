"""Mapping kinds: how one Megatron parameter is made of Hugging Face tensors, and how it is split over TP.

A mapping pairs one Megatron name with one or more HF names and knows two separate things:
* **format** (``to_megatron`` / ``to_hf``): full tensors in, full tensors out, e.g. fusing q, k, v
  into Megatron's grouped QKV layout;
* **distribution** over tensor parallelism (``tp_dim``, ``shard`` / ``unshard``): which dimension is
  split, and how. Pipeline ownership is not a mapping's business (see ``distribution.py``).

Example (GQA with 4 heads, 2 kv groups, head dim 32, hidden 128)::

    m = QKV("decoder.layers.0.self_attention.linear_qkv.weight",
            ("model.layers.0.self_attn.q_proj.weight", "...k_proj.weight", "...v_proj.weight"))
    fused = m.to_megatron({"...q_proj.weight": q, ...}, cfg)   # [(4 + 2*2) * 32, 128], grouped [q0 q1 k0 v0 | q2 q3 k1 v1]
    m.shard(fused, tp_rank=1, tp_size=2)                      # the second kv group with its q heads
"""

from __future__ import annotations

import torch
from torch import Tensor


class Mapping:
    """One Megatron parameter <-> HF tensors. Subclasses set ``tp_dim`` and override format hooks."""

    tp_dim: int | None = None  # None: the same on every TP rank; else the split dimension

    def __init__(self, megatron: str, hf: str | tuple[str, ...], *, export: bool = True, engine_fp32: bool = False):
        self.megatron = megatron
        self.hf = (hf,) if isinstance(hf, str) else tuple(hf)
        self.export = export  # False for a copy that must not be written twice (tied output layer)
        # True where the rollout engine keeps the tensor in fp32 whatever its dtype (vLLM's GDN A_log): weight
        # sync then sends it uncast, so a synced engine holds what an engine loaded from an fp32 export holds
        self.engine_fp32 = engine_fp32

    def __repr__(self):
        return f"{type(self).__name__}({self.megatron!r} <- {', '.join(self.hf)})"

    # format ------------------------------------------------------------------
    def to_megatron(self, tensors: dict[str, Tensor], cfg) -> Tensor:
        return tensors[self.hf[0]]

    def to_hf(self, full: Tensor, cfg) -> dict[str, Tensor]:
        return {self.hf[0]: full}

    # distribution ------------------------------------------------------------
    def shard(self, full: Tensor, tp_rank: int, tp_size: int) -> Tensor:
        if self.tp_dim is None or tp_size == 1:
            return full
        return full.chunk(tp_size, dim=self.tp_dim)[tp_rank]

    def unshard(self, shards: list[Tensor]) -> Tensor:
        if self.tp_dim is None or len(shards) == 1:
            return shards[0]
        return torch.cat(shards, dim=self.tp_dim)

    def full_shape(self, local_shape: torch.Size, tp_size: int) -> tuple[int, ...]:
        shape = list(local_shape)
        if self.tp_dim is not None:
            shape[self.tp_dim] *= tp_size
        return tuple(shape)


class Replicated(Mapping):
    """Same tensor on every TP rank (norms, the vision tower)."""


class ColumnParallel(Mapping):
    """Split along the output dimension (dim 0): column-parallel linears and vocab-parallel embeddings."""

    tp_dim = 0


class RowParallel(Mapping):
    """Split along the input dimension (dim 1): row-parallel linears."""

    tp_dim = 1


class QKV(ColumnParallel):
    """q, k, v projections (weight or bias) <-> Megatron's fused ``linear_qkv``.

    Megatron groups by kv head: for each group g, [the q heads of g, k_g, v_g]. Splitting that
    along dim 0 gives each TP rank whole groups, so the plain column split is right."""

    def _dims(self, cfg):
        head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
        return cfg.num_query_groups, cfg.num_attention_heads // cfg.num_query_groups, head_dim

    def to_megatron(self, tensors, cfg):
        groups, per_group, head_dim = self._dims(cfg)
        q, k, v = (tensors[n] for n in self.hf)
        rest = q.shape[1:]
        q = q.reshape(groups, per_group * head_dim, *rest)
        k = k.reshape(groups, head_dim, *rest)
        v = v.reshape(groups, head_dim, *rest)
        return torch.cat([q, k, v], dim=1).reshape(-1, *rest)

    def to_hf(self, full, cfg):
        groups, per_group, head_dim = self._dims(cfg)
        rest = full.shape[1:]
        grouped = full.reshape(groups, (per_group + 2) * head_dim, *rest)
        q, k, v = grouped.split([per_group * head_dim, head_dim, head_dim], dim=1)
        return {self.hf[0]: q.reshape(-1, *rest).contiguous(), self.hf[1]: k.reshape(-1, *rest).contiguous(),
                self.hf[2]: v.reshape(-1, *rest).contiguous()}


class GatedMLP(ColumnParallel):
    """gate and up projections <-> Megatron's ``linear_fc1`` = [gate; up].

    Each TP rank holds [its gate shard; its up shard], so the split is per half."""

    def to_megatron(self, tensors, cfg):
        return torch.cat([tensors[self.hf[0]], tensors[self.hf[1]]], dim=0)

    def to_hf(self, full, cfg):
        gate, up = full.chunk(2, dim=0)
        return {self.hf[0]: gate.contiguous(), self.hf[1]: up.contiguous()}

    def shard(self, full, tp_rank, tp_size):
        if tp_size == 1:
            return full
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size)[tp_rank], up.chunk(tp_size)[tp_rank]])

    def unshard(self, shards):
        if len(shards) == 1:
            return shards[0]
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])


class PartsColumnParallel(ColumnParallel):
    """Several column blocks in one Megatron parameter, each split over TP on its own: a TP rank holds
    [its shard of part 0; its shard of part 1; ...] (Gated DeltaNet's ``in_proj`` = q, k, v, z, b, a,
    and its ``conv1d`` = q, k, v channels). ``parts`` are the part sizes along dim 0 and ``hf_parts``
    how many consecutive parts each HF tensor holds (``in_proj_qkv`` holds three)."""

    def __init__(self, megatron: str, hf, *, parts: tuple[int, ...], hf_parts: tuple[int, ...], **kwargs):
        super().__init__(megatron, hf, **kwargs)
        if len(self.hf) != len(hf_parts) or sum(hf_parts) != len(parts):
            raise ValueError(f"{megatron}: {len(self.hf)} HF tensors for hf_parts {hf_parts} over {len(parts)} parts")
        self.parts, self.hf_parts = tuple(parts), tuple(hf_parts)

    def to_megatron(self, tensors, cfg):
        return torch.cat([tensors[n] for n in self.hf], dim=0)

    def to_hf(self, full, cfg):
        sizes, i = [], 0
        for n in self.hf_parts:
            sizes.append(sum(self.parts[i:i + n]))
            i += n
        return {name: t.contiguous() for name, t in zip(self.hf, full.split(sizes, dim=0))}

    def shard(self, full, tp_rank, tp_size):
        if tp_size == 1:
            return full
        return torch.cat([p.chunk(tp_size, dim=0)[tp_rank] for p in full.split(self.parts, dim=0)])

    def unshard(self, shards):
        if len(shards) == 1:
            return shards[0]
        local = [s // len(shards) for s in self.parts]
        pieces = [s.split(local, dim=0) for s in shards]
        return torch.cat([torch.cat([p[i] for p in pieces]) for i in range(len(self.parts))])


class GatedQKV(ColumnParallel):
    """q_proj emitting [q | gate] per head, k_proj, v_proj <-> Megatron's gated ``linear_qkv``: per kv
    group [the q heads of the group, their gates, k, v] (megatron-core's ``attention_output_gate`` layout).
    Whole groups per TP rank, so the plain column split is right."""

    def _dims(self, cfg):
        return cfg.num_query_groups, cfg.num_attention_heads // cfg.num_query_groups, cfg.head_dim

    def to_megatron(self, tensors, cfg):
        groups, per_group, head_dim = self._dims(cfg)
        q_gate, k, v = (tensors[n] for n in self.hf)
        rest = q_gate.shape[1:]
        q_gate = q_gate.reshape(groups, per_group, 2, head_dim, *rest)
        q = q_gate[:, :, 0].reshape(groups, per_group * head_dim, *rest)
        gate = q_gate[:, :, 1].reshape(groups, per_group * head_dim, *rest)
        return torch.cat([q, gate, k.reshape(groups, head_dim, *rest), v.reshape(groups, head_dim, *rest)],
                         dim=1).reshape(-1, *rest)

    def to_hf(self, full, cfg):
        groups, per_group, head_dim = self._dims(cfg)
        rest = full.shape[1:]
        q, gate, k, v = full.reshape(groups, (2 * per_group + 2) * head_dim, *rest).split(
            [per_group * head_dim, per_group * head_dim, head_dim, head_dim], dim=1)
        q_gate = torch.stack([q.reshape(groups, per_group, head_dim, *rest),
                              gate.reshape(groups, per_group, head_dim, *rest)], dim=2)
        return {self.hf[0]: q_gate.reshape(-1, *rest).contiguous(), self.hf[1]: k.reshape(-1, *rest).contiguous(),
                self.hf[2]: v.reshape(-1, *rest).contiguous()}
