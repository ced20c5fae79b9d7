"""An fp32 copy of half-precision weights, sharded over data parallelism (the EMA teacher's).

The weights are made views into one flat buffer, padded to a multiple of the group size; each
data-parallel rank keeps the fp32 copy of its contiguous slice only (``4 n / DP`` bytes, as the
distributed optimizer keeps its masters). :meth:`lerp_` moves the slice toward a source (the
student's weights, same layout) in fp32, rounds it into the buffer, and one all-gather over the group
brings every rank's rounded slice into the weights. With a group of one (or None) the copy is whole
and nothing is communicated.

For checkpoints :meth:`full` gathers the whole fp32 copy (by parameter name, shaped like the
weights); :meth:`load_full` takes one and keeps this rank's slice.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class ShardedFP32Copy:
    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], group=None):
        self.group = group if group is not None and dist.get_world_size(group) > 1 else None
        size = dist.get_world_size(self.group) if self.group is not None else 1
        rank = dist.get_rank(self.group) if self.group is not None else 0
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        total = sum(p.numel() for p in self.params)
        shard = -(-total // size)
        first = self.params[0]
        self.flat = torch.zeros(shard * size, dtype=first.dtype, device=first.device)
        self.spans, offset = [], 0
        with torch.no_grad():
            for p in self.params:
                self.flat[offset:offset + p.numel()].copy_(p.reshape(-1))
                p.data = self.flat[offset:offset + p.numel()].view_as(p)
                self.spans.append((offset, offset + p.numel()))
                offset += p.numel()
        self.lo, self.hi = rank * shard, (rank + 1) * shard
        self.shard = self.flat[self.lo:self.hi].float()  # this rank's fp32 copy

    def _pieces(self):
        """(parameter index, start in the parameter, start in the shard, length) of each parameter
        overlapping this rank's slice."""
        for i, (a, b) in enumerate(self.spans):
            lo, hi = max(a, self.lo), min(b, self.hi)
            if lo < hi:
                yield i, lo - a, lo - self.lo, hi - lo

    @torch.no_grad()
    def lerp_(self, sources: list[torch.Tensor], rate: float) -> None:
        """copy <- (1 - rate) copy + rate source, in fp32; then the weights <- the rounded copy."""
        pieces = list(self._pieces())
        targets = [self.shard[s:s + n] for _, _, s, n in pieces]
        values = [sources[i].detach().reshape(-1)[a:a + n].float() for i, a, _, n in pieces]
        if targets:
            torch._foreach_lerp_(targets, values, rate)
        self.flat[self.lo:self.hi].copy_(self.shard)
        if self.group is not None:
            dist.all_gather_into_tensor(self.flat, self.flat[self.lo:self.hi].clone(), group=self.group)

    def full(self) -> dict[str, torch.Tensor]:
        """Collective over the group: the whole fp32 copy, by parameter name."""
        if self.group is None:
            flat = self.shard
        else:
            flat = torch.empty(self.flat.numel(), dtype=torch.float32, device=self.flat.device)
            dist.all_gather_into_tensor(flat, self.shard.clone(), group=self.group)
        return {n: flat[a:b].view_as(p) for n, (a, b), p in zip(self.names, self.spans, self.params)}

    @torch.no_grad()
    def load_full(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set the copy (this rank's slice) and the rounded weights from whole fp32 tensors."""
        flat = torch.zeros(self.flat.numel(), dtype=torch.float32, device=self.flat.device)
        for n, (a, b) in zip(self.names, self.spans):
            flat[a:b].copy_(tensors[n].reshape(-1))
        self.shard.copy_(flat[self.lo:self.hi])
        self.flat.copy_(flat)
