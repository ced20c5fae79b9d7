"""The distillation loss on vocabulary-parallel logits, chunked over tokens (the production path).

Same loss and arguments as the dense reference :func:`megatron_vopd.distill.loss.generalized_jsd_loss`
(read its docstring for the definition), for logits sharded like Megatron's output layer: TP rank r
holds ``[N, V/TP]``, the ids ``[r*V/TP, (r+1)*V/TP)``. Every rank of the TP group gets the same loss
and the gradient of its own vocabulary slice. The mask (and log_ratio) must be the same on all of them.

How it is computed, per chunk of ``chunk_tokens`` valid positions (masked positions are skipped):

* global logsumexp: each rank's local ``logsumexp`` over its slice, combined with an all-reduce(max)
  and an all-reduce(sum of exp(local - max)): ``lse = max + log sum_r exp(lse_r - max)``;
* top-k: local top-k of the student logits, all-gather of the ``[c, TP*k]`` candidate values and
  global ids, top-k of those; the student/teacher logits at the chosen ids are gathered with a mask
  (ids this rank owns) and an all-reduce(sum); from then on the ``[c, k+1]`` restricted
  distributions are replicated and the loss is the reference's ``jsd_terms(with_tail(...))``;
* full vocabulary: the elementwise JSD terms are summed locally and all-reduced.

Gradient (no recomputation through autograd, no collective in backward). With ``a = x/T - lse`` the
student log-probs at the support (the K ids, or every id) and ``g = dloss/da``::

    dloss/dx_v = (g_v [v in support] - p_v * sum(g)) / T,        p = softmax(x/T)

In top-k mode ``g`` (``[c, k]``, through the tail bucket too) comes from autograd on the small
replicated tensors in the forward pass and is kept with the ids and the student ``lse``; in backward
each rank only rebuilds ``p`` on its slice (one ``[c, V/TP]`` tensor) and adds ``g`` at the ids it
owns. In full-vocabulary mode ``g`` is elementwise (``alpha = 0``: ``-q``; ``alpha = 1``:
``p (a - b + 1)``; else ``(1 - alpha) p (a - log M)``) and rebuilt per chunk in backward, with
``sum(g)`` all-reduced in the forward pass. Because every TP rank holds the same replicated loss,
rank r's gradient is ``dloss/dx_r`` once: nothing is summed over ranks in backward (the mistake an
autograd all-reduce with a sum-backward would make here, counting the loss TP times).

Memory: never ``[N, V/TP]`` beyond the gradient itself. Top-k mode holds one ``[chunk_tokens, V/TP]``
fp32 temporary at a time (the local logsumexp; top-k and gathers read the logits in place, and
backward builds ``p`` directly in the gradient's rows); full-vocabulary mode a few. With
``inplace_grad=True`` the gradient is written into the student logits' own storage (Megatron's
vocab-parallel cross-entropy does the same), so the loss adds no ``[N, V/TP]`` tensor at all: the
logits must then not be read after backward, and should not be a leaf. Inputs may be fp32, bf16/fp16
(computed in fp32) or fp64. Ties at the k-th largest student logit may be broken differently from
the dense reference (a different but equally valid support).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from megatron_vopd.config import DistillConfig
from megatron_vopd.distill.loss import (LogRatio, _check_args, _scaled, compute_dtype, importance_weights,
                                        jsd_terms, reduce_tokens, with_tail)

Tensor = torch.Tensor


def vocab_parallel_generalized_jsd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *,
                                        alpha: float = 0.5, top_k: int | None = 100, temperature: float = 1.0,
                                        log_ratio: LogRatio = None, is_clip: float | None = 2.0,
                                        reduction: str = "mean", tp_group=None, chunk_tokens: int | None = None,
                                        inplace_grad: bool = False) -> Tensor:
    """Generalised JSD on vocab-parallel logits ``[N, V/TP]`` (or ``[B, S, V/TP]``); see the module
    docstring. ``tp_group``: default Megatron's tensor-parallel group (a single process without one
    works too); ``chunk_tokens``: default ``DistillConfig.loss_chunk_tokens``."""
    _check_args(alpha, top_k, temperature, reduction)
    chunk_tokens = DistillConfig().loss_chunk_tokens if chunk_tokens is None else chunk_tokens
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1 (distill.loss_chunk_tokens), got {chunk_tokens}")
    tp = _TensorParallel.resolve(tp_group)
    local_vocab = student_logits.shape[-1]
    x = student_logits.reshape(-1, local_vocab)
    y = teacher_logits.detach().reshape(-1, local_vocab)
    mask = mask.reshape(-1).bool()
    k = None if top_k is None else min(top_k, local_vocab * tp.size)
    per_token = _VocabParallelJSD.apply(x, y, mask, alpha, k, temperature, chunk_tokens, inplace_grad, tp)
    weights = importance_weights(log_ratio, is_clip)
    if weights is not None:
        per_token = per_token * weights.reshape(-1).to(per_token.dtype)
    return reduce_tokens(per_token, mask, reduction)


@dataclass(frozen=True)
class _TensorParallel:
    """The TP group with the few collectives the loss needs (no-ops for a group of one)."""

    group: object
    size: int
    rank: int

    @classmethod
    def resolve(cls, group) -> _TensorParallel:
        if group is None:
            from megatron.core import parallel_state as ps

            if ps.model_parallel_is_initialized():
                group = ps.get_tensor_model_parallel_group()
            elif not dist.is_initialized() or dist.get_world_size() == 1:
                return cls(None, 1, 0)
            else:
                raise ValueError("no tensor-parallel group: pass tp_group= or build Megatron's parallel state "
                                 "(megatron_vopd.runtime.init_distributed)")
        return cls(group, dist.get_world_size(group), dist.get_rank(group))

    def all_reduce(self, x: Tensor, op=dist.ReduceOp.SUM) -> Tensor:
        if self.size > 1:
            x = x.contiguous()
            dist.all_reduce(x, op=op, group=self.group)
        return x

    def all_gather_last(self, x: Tensor) -> Tensor:
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def logsumexp(self, local: Tensor) -> Tensor:
        """Global logsumexp from each rank's local logsumexp (any shape, elementwise over ranks)."""
        if self.size == 1:
            return local
        top = self.all_reduce(local.clone(), dist.ReduceOp.MAX)
        return self.all_reduce((local - top).exp()).log() + top

    def topk_ids(self, x: Tensor, k: int) -> Tensor:
        """Global ids ``[c, k]`` of the k largest entries of the sharded rows ``x [c, V/TP]``."""
        # k == 1 (argmax): max reads the row once, topk keeps a heap (several times slower on a vocabulary)
        values, ids = x.max(-1, keepdim=True) if k == 1 else x.topk(min(k, x.shape[-1]), dim=-1)
        ids = ids + self.rank * x.shape[-1]
        if self.size == 1:
            return ids
        values = values.to(torch.promote_types(values.dtype, torch.float32))  # exact; no bf16 collectives
        values, ids = self.all_gather_last(values), self.all_gather_last(ids)
        return ids.gather(-1, values.topk(k, dim=-1).indices)

    def owned(self, ids: Tensor, local_vocab: int) -> tuple[Tensor, Tensor]:
        """(local ids clamped into range, whether this rank holds each global id)."""
        local = ids - self.rank * local_vocab
        return local.clamp(0, local_vocab - 1), (local >= 0) & (local < local_vocab)

    def gather(self, tensors: list[Tensor], ids: Tensor, dtype: torch.dtype) -> Tensor:
        """Each sharded ``[c, V/TP]`` tensor at the global ``ids [c, k]``, whichever rank holds them
        (mask + one all-reduce), in ``dtype``: ``[len(tensors), c, k]``."""
        local, owned = self.owned(ids, tensors[0].shape[-1])
        picked = [torch.where(owned, t.gather(-1, local).to(dtype), 0.0) for t in tensors]
        return self.all_reduce(torch.stack(picked))


@dataclass
class _Rows:
    """A chunk of valid positions: their indices, and the slice when they are consecutive (no copy)."""

    index: Tensor
    span: slice | None

    @classmethod
    def chunks(cls, mask: Tensor, size: int) -> list[_Rows]:
        valid = mask.nonzero().flatten()
        out = []
        for index in valid.split(size) if len(valid) else ():
            first, last = int(index[0]), int(index[-1])
            out.append(cls(index, slice(first, last + 1) if last - first + 1 == len(index) else None))
        return out

    def take(self, x: Tensor) -> Tensor:
        return x[self.span] if self.span is not None else x.index_select(0, self.index)


class _VocabParallelJSD(torch.autograd.Function):
    """Per-token loss ``[N]`` (0 at masked positions) of sharded logits; gradient for the student only."""

    @staticmethod
    def forward(ctx, x, y, mask, alpha, k, temperature, chunk_tokens, inplace_grad, tp):
        dtype = compute_dtype(x, y)
        need_grad = ctx.needs_input_grad[0]
        rows_list = _Rows.chunks(mask, chunk_tokens)
        out = torch.zeros(x.shape[0], dtype=dtype, device=x.device)
        caches = []
        for rows in rows_list:
            xs, xt = rows.take(x), rows.take(y)  # views, or copies in the input dtype
            lse = tp.logsumexp(torch.stack([_logsumexp(xs, dtype, temperature),
                                            _logsumexp(xt, dtype, temperature)]))  # [2, c] of x/T
            if k is None:
                loss, cache = _full_forward(xs, xt, lse, alpha, temperature, dtype, tp, need_grad)
            else:
                loss, cache = _topk_forward(xs, xt, lse, k, alpha, temperature, dtype, tp, need_grad)
            out[rows.index] = loss
            caches.append(cache)
            del xs, xt
        ctx.save_for_backward(x, y, mask)
        ctx.rows, ctx.caches, ctx.dtype = rows_list, caches, dtype
        ctx.alpha, ctx.topk, ctx.temperature, ctx.inplace, ctx.tp = alpha, k is not None, temperature, inplace_grad, tp
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, y, mask = ctx.saved_tensors
        grad = x.masked_fill_(~mask[:, None], 0) if ctx.inplace else torch.zeros_like(x)
        for rows, cache in zip(ctx.rows, ctx.caches):
            scale = grad_out[rows.index].to(ctx.dtype) / ctx.temperature  # upstream gradient * d(x/T)/dx
            if ctx.topk:
                chunk_grad = _topk_backward(x, grad, rows, cache, scale, ctx)
            else:
                chunk_grad = _full_backward(x, y, rows, cache, scale, ctx)
            _write_rows(grad, rows, chunk_grad)
            del chunk_grad  # freed before the next chunk allocates its own
        return grad, None, None, None, None, None, None, None, None


def _topk_forward(xs, xt, lse, k, alpha, temperature, dtype, tp, need_grad):
    """Loss ``[c]`` over the student's top-k + tail, and (student lse, ids, dloss/da_K) for backward.
    xs, xt: the chunk's raw logits (input dtype); the order of x/T is the order of x."""
    ids = tp.topk_ids(xs, k)
    at_ids = _scaled(tp.gather([xs, xt], ids, dtype), temperature) - lse[..., None]  # [2, c, k] log-probs
    teacher = with_tail(at_ids[1])
    with torch.enable_grad():
        student_k = at_ids[0].detach().requires_grad_(need_grad)
        loss = jsd_terms(with_tail(student_k), teacher, alpha).sum(-1)
        g = torch.autograd.grad(loss.sum(), student_k)[0] if need_grad else None
    return loss.detach(), (lse[0], ids, g)


def _full_forward(xs, xt, lse, alpha, temperature, dtype, tp, need_grad):
    """Full-vocabulary loss ``[c]``, and (lse, sum_v dloss/da_v) for backward."""
    a = _scaled(xs.to(dtype), temperature) - lse[0, :, None]
    b = _scaled(xt.to(dtype), temperature) - lse[1, :, None]
    sums = [jsd_terms(a, b, alpha).sum(-1)]
    if need_grad:
        sums.append(_dloss_da(a, b, alpha).sum(-1))
    sums = tp.all_reduce(torch.stack(sums))
    return sums[0], (lse, sums[1] if need_grad else None)


def _topk_backward(x, grad, rows, cache, scale, ctx):
    """``(g at the ids this rank owns - p * sum(g)) * scale`` for the chunk's rows, computed in the
    gradient's own rows when they are consecutive and of the compute dtype (no temporary)."""
    lse, ids, g = cache
    xs = rows.take(x).to(ctx.dtype)
    # the gradient's rows (x's own rows with inplace_grad), else xs, then a copy (index_select or cast)
    out = grad[rows.span] if rows.span is not None and grad.dtype == ctx.dtype else xs
    if ctx.temperature != 1.0:
        torch.div(xs, ctx.temperature, out=out)
    elif out.data_ptr() != xs.data_ptr():
        out.copy_(xs)
    out.sub_(lse[:, None]).exp_().mul_((-g.sum(-1) * scale)[:, None])  # -p * sum(g)
    local, owned = ctx.tp.owned(ids, x.shape[-1])
    return out.scatter_add_(-1, local, torch.where(owned, g * scale[:, None], 0.0))


def _full_backward(x, y, rows, cache, scale, ctx):
    """``(g - p * sum(g)) * scale`` for the chunk's rows, g elementwise over this rank's slice."""
    lse, g_sum = cache
    a = _scaled(rows.take(x).to(ctx.dtype), ctx.temperature) - lse[0, :, None]
    b = _scaled(rows.take(y).to(ctx.dtype), ctx.temperature) - lse[1, :, None]
    return _dloss_da(a, b, ctx.alpha).sub_(a.exp_().mul_(g_sum[:, None])).mul_(scale[:, None])


def _dloss_da(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """Elementwise d(sum jsd_terms(a, b))/da, a and b full-vocabulary log-probs (a new tensor)."""
    if alpha == 0.0:
        return -b.exp()
    if alpha == 1.0:
        return a.exp() * (a - b + 1.0)
    m = torch.logaddexp(a + math.log(1.0 - alpha), b + math.log(alpha))
    return (1.0 - alpha) * a.exp() * (a - m)


def _logsumexp(x: Tensor, dtype: torch.dtype, temperature: float, block_rows: int = 16) -> Tensor:
    """Row logsumexp of ``x / T`` in ``dtype``, ``block_rows`` rows at a time through one reused block
    buffer (a few MB that stay in the CPU's caches) instead of a copy of all of x (torch.logsumexp holds
    two, and a bf16 input would need an fp32 copy besides)."""
    out = torch.empty(x.shape[:-1], dtype=dtype, device=x.device)
    buf = torch.empty((min(block_rows, x.shape[0]), x.shape[-1]), dtype=dtype, device=x.device)
    for rows, res in zip(x.split(block_rows), out.split(block_rows)):
        tmp = buf[:rows.shape[0]]
        top = rows.amax(-1, keepdim=True).to(dtype)
        if temperature != 1.0:
            top = top / temperature
            tmp.copy_(rows).div_(temperature).sub_(top)  # divided in dtype (torch.div of bf16 rounds in bf16)
        else:
            torch.sub(rows, top, out=tmp)
        torch.add(tmp.exp_().sum(-1).log_(), top.squeeze(-1), out=res)
    return out


def _write_rows(grad: Tensor, rows: _Rows, chunk_grad: Tensor) -> None:
    if rows.span is not None:
        target = grad[rows.span]
        if chunk_grad.data_ptr() != target.data_ptr():  # else computed in place in the logits
            target.copy_(chunk_grad)
    else:
        grad.index_copy_(0, rows.index, chunk_grad.to(grad.dtype))


@torch.no_grad()
def vocab_parallel_argmax(logits: Tensor, *, tp_group=None) -> Tensor:
    """The argmax id ``[N]`` (global) of sharded logits ``[N, V/TP]`` on every rank of the TP group
    (reads the logits in place; temperature does not move an argmax)."""
    return _TensorParallel.resolve(tp_group).topk_ids(logits, 1)[:, 0]


@torch.no_grad()
def vocab_parallel_token_stats(logits: Tensor, targets: Tensor, *, temperature: float = 1.0, tp_group=None,
                               chunk_tokens: int = 2048) -> tuple[Tensor, Tensor]:
    """No-grad statistics of sharded logits ``[N, V/TP]``: the log-prob of ``targets [N]`` (global ids)
    under ``softmax(logits / T)`` and the argmax id ``[N]``; every rank of the TP group gets both."""
    tp = _TensorParallel.resolve(tp_group)
    logprobs, argmax = [], []
    for x, t in zip(logits.split(chunk_tokens), targets.split(chunk_tokens)):
        dtype = compute_dtype(x)
        lse = tp.logsumexp(_logsumexp(x, dtype, temperature))
        picked = tp.gather([x], t[:, None], dtype)[0, :, 0]
        logprobs.append(_scaled(picked, temperature) - lse)
        argmax.append(tp.topk_ids(x, 1)[:, 0])  # reads x in place (no upcast copy of the chunk)
    if not logprobs:
        return logits.new_zeros(0, dtype=torch.float32), targets.new_zeros(0)
    return torch.cat(logprobs), torch.cat(argmax)
