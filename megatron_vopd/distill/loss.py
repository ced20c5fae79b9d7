"""The distillation loss, dense reference: generalised JSD between teacher and student, token by token.

This is the plain, readable definition (every position holds the full ``[V]`` logits); the production
path with vocabulary-sharded logits and token chunking, which must agree with it, is
:mod:`megatron_vopd.distill.vocab_parallel`.

Math (docs/method.md, "Loss"). At each response position, with temperature T::

    s = log_softmax(student / T),  t = log_softmax(teacher / T)         over the FULL vocabulary
    top_k = k:    K = the student's k most likely ids; both distributions become k + 1 buckets,
                  [p_K, tail] with log tail = log(1 - sum_K p) = log1mexp(min(logsumexp(s_K), -1e-7))
    top_k = None: the full-vocabulary distributions
    M = (1 - alpha) P_S + alpha P_T             (log M = logaddexp(log(1-alpha) + s, log(alpha) + t))
    loss_n = alpha KL(P_T || M) + (1 - alpha) KL(P_S || M)
    alpha = 0:  loss_n = KL(P_T || P_S)  (forward KL)      alpha = 1:  loss_n = KL(P_S || P_T)  (reverse KL)

The endpoints are definitions, not limits of the mixture formula: as alpha -> 0 the mixture form itself
tends to 0 (like alpha * KL(T||S)); it is JSD_alpha / alpha that tends to the forward KL. This is the
convention of TRL's ``GKDTrainer.generalized_jsd_loss`` (its ``beta`` is our ``alpha``: mixture
``(1-beta) S + beta T``, ``beta * KL(T||M) + (1-beta) KL(S||M)``, ``beta == 0`` -> ``kl_div(s, t)`` =
KL(T||S), ``beta == 1`` -> KL(S||T)), and the one docs/method.md states.

The teacher is always detached; the gradient flows through the student only (also through M and the
tail bucket). The support K is chosen on detached student logits (selection has no gradient).

The tail floor: ``1 - sum_K p`` is computed as ``log1mexp(lse)`` with ``lse = logsumexp(s_K)``;
``lse`` is clamped to at most ``-1e-7`` (:data:`TAIL_LSE_MAX`), i.e. the tail mass is floored at ~1e-7.
Without the clamp, ``lse`` can round to 0 or slightly above (k = V, or a distribution concentrated on
K) and the log would be -inf or NaN. 1e-7 is about fp32's resolution of ``1 - sum``: a smaller tail is
rounding noise there. When the floor is active the tail gets no gradient, and when both tails are
floored (k = V) they are equal and contribute exactly 0 to the loss.

Importance weights: ``log_ratio`` is ``logp_theta - logp_old`` per token, or a tuple of such log-ratios
(``(logp_theta - logp_old, logp_old - logp_rollout)``; ``None`` entries are skipped). Each ratio is
exponentiated and clipped from above at ``is_clip`` separately, the clipped weights multiply, and the
product is detached. No ratio: weights 1.

Aggregation (``reduction``): ``"mean"`` = token mean over the valid tokens of THIS call (0 when there
are none); ``"sum"`` = the weighted sum over valid tokens; ``"none"`` = the per-token losses ``[N]``
(0 at masked positions). A trainer that averages over the GLOBAL batch (all micro-batches and
data-parallel ranks) uses ``"sum"`` per micro-batch and divides by :func:`num_valid_tokens` of the
whole step (all-reduced over the data-parallel group)::

    n = sum(num_valid_tokens(mb.mask) for mb in micro_batches)          # local count
    n = num_valid_tokens(n, group=dp_group)                             # global count
    for mb in micro_batches:
        (generalized_jsd_loss(..., reduction="sum") / n).backward()
    # if the DDP wrapper averages gradients over dp ranks, multiply by the dp size (or tell it not to)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_vopd.runtime.distributed import comm_device

Tensor = torch.Tensor
LogRatio = Tensor | Sequence[Tensor | None] | None

TAIL_LSE_MAX = -1e-7  # logsumexp(s_K) is clamped to at most this: tail mass floor ~1e-7
REDUCTIONS = ("mean", "sum", "none")


def generalized_jsd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, alpha: float = 0.5,
                         top_k: int | None = 100, temperature: float = 1.0, log_ratio: LogRatio = None,
                         is_clip: float | None = 2.0, reduction: str = "mean") -> Tensor:
    """Generalised JSD between student and teacher at the valid positions (dense reference).

    student_logits, teacher_logits: ``[N, V]`` or ``[B, S, V]`` (flattened to ``[N, V]``), any float dtype;
    computed in fp32 (fp64 when an input is fp64). mask: ``[N]`` or ``[B, S]``, bool or 0/1, valid
    response tokens. alpha in [0, 1]: 0 = KL(T||S), 1 = KL(S||T). top_k: the student's top-k support
    plus a tail bucket, ``None`` = full vocabulary (k >= V: all ids, tail floored). See the module
    docstring for log_ratio/is_clip and reduction. Returns a scalar (``[N]`` for ``reduction="none"``).
    """
    _check_args(alpha, top_k, temperature, reduction)
    vocab = student_logits.shape[-1]
    x = student_logits.reshape(-1, vocab)
    y = teacher_logits.detach().reshape(-1, vocab)
    mask = mask.reshape(-1).bool()
    dtype = compute_dtype(x, y)
    s = F.log_softmax(_scaled(x.to(dtype), temperature), dim=-1)
    t = F.log_softmax(_scaled(y.to(dtype), temperature), dim=-1)
    if top_k is not None:
        support = s.detach().topk(min(top_k, vocab), dim=-1).indices
        s, t = with_tail(s.gather(-1, support)), with_tail(t.gather(-1, support))
    per_token = jsd_terms(s, t, alpha).sum(-1)
    weights = importance_weights(log_ratio, is_clip)
    if weights is not None:
        per_token = per_token * weights.reshape(-1).to(per_token.dtype)
    return reduce_tokens(per_token, mask, reduction)


def jsd_terms(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """Elementwise contributions whose sum over the last dim is the divergence of student log-probs
    ``a`` and teacher log-probs ``b`` (same shape; both normalised over that dim)."""
    if alpha == 0.0:  # KL(P_T || P_S)
        return b.exp() * (b - a)
    if alpha == 1.0:  # KL(P_S || P_T)
        return a.exp() * (a - b)
    m = torch.logaddexp(a + math.log(1.0 - alpha), b + math.log(alpha))
    return alpha * b.exp() * (b - m) + (1.0 - alpha) * a.exp() * (a - m)


def with_tail(logp_support: Tensor) -> Tensor:
    """``[..., k]`` log-probs of the support -> ``[..., k + 1]``: the support and the tail bucket
    ``log(1 - sum p)``, computed as log1mexp of the logsumexp clamped to at most TAIL_LSE_MAX."""
    lse = torch.logsumexp(logp_support, dim=-1, keepdim=True).clamp(max=TAIL_LSE_MAX)
    return torch.cat([logp_support, log1mexp(lse)], dim=-1)


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for x < 0, accurate at both ends (Maechler 2012: expm1 near 0, log1p far)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def importance_weights(log_ratio: LogRatio, is_clip: float | None) -> Tensor | None:
    """Detached product of ``min(exp(r), is_clip)`` over the given log-ratios; None when none given."""
    if log_ratio is None:
        return None
    ratios = [log_ratio] if isinstance(log_ratio, Tensor) else [r for r in log_ratio if r is not None]
    weights = None
    for r in ratios:
        r = r.detach()
        if is_clip is not None:
            r = r.clamp(max=math.log(is_clip))
        w = r.exp()
        weights = w if weights is None else weights * w
    return weights


def reduce_tokens(per_token: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Zero the masked positions of ``per_token [N]`` and reduce: mean over valid tokens, sum or none."""
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1).to(total.dtype)


def num_valid_tokens(mask: Tensor | int, group=None) -> Tensor:
    """Number of valid tokens in ``mask`` (or an int/tensor count), summed over ``group`` when given
    (e.g. the data-parallel group): the denominator of the global token mean."""
    is_mask = isinstance(mask, Tensor) and mask.dim() > 0
    count = (mask.bool().sum() if is_mask else torch.as_tensor(mask)).to(torch.int64).reshape(())
    if group is not None and dist.get_world_size(group) > 1:
        count = count.to(comm_device(), copy=True)
        dist.all_reduce(count, group=group)
    return count


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp64 when any input is fp64, else fp32 (bf16/fp16 inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _scaled(x: Tensor, temperature: float) -> Tensor:
    return x if temperature == 1.0 else x / temperature


def _check_args(alpha: float, top_k: int | None, temperature: float, reduction: str) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (distill.alpha), got {alpha}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None (distill.top_k), got {top_k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (distill.temperature), got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
