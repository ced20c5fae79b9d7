"""What one optimiser step computes, given the step's micro-batches: the gradient and its metrics.

``vision_opd``: label-free on-policy self-distillation. For each group of micro-batches (at most
``distill.teacher_logit_tokens`` response rows, which bounds the teacher logits kept in memory):

1. teacher forward-only on the teacher sequences [crop prompt | response] (teacher weights: the
   student's own, EMA or fixed), keeping its vocab-parallel logits at the response rows;
2. student forward/backward on the student sequences [full-image prompt | same response], loss at
   the last pipeline stage: generalised JSD (``distill.*``), importance weight
   ``min(exp(logp_old - logp_rollout), is_clip)`` (strictly on-policy, so logp_theta = logp_old);
3. when ``distill.crop_anchor_weight`` > 0: the student on the crop sequences, same divergence to the
   same teacher logits (the label-free crop anchor), times the weight.

``crop_sft``: supervised cross entropy of a reference response after the crop prompt (the demo's
labelled warm-up that creates the regional-to-global gap; never part of Vision-OPD itself).

Losses are sums over response rows divided by the step's global row count (a token mean over the
whole batch, all data-parallel replicas); Megatron's schedule divides a micro-batch loss by the
number of micro-batches in the call, which ``_scale`` undoes. Metrics are sums on the last stage,
reduced over data parallelism and returned on every rank.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from megatron_vopd.distill.vocab_parallel import (vocab_parallel_argmax, vocab_parallel_generalized_jsd_loss,
                                                  vocab_parallel_token_stats)
from megatron_vopd.runtime.distributed import comm_device
from megatron_vopd.train.schedule import forward_backward, from_last_stage


def _groups(mbs: list[dict], row_budget: int) -> list[list[int]]:
    groups, current, rows = [], [], 0
    for i, mb in enumerate(mbs):
        n = len(mb["targets"])
        if current and rows + n > row_budget:
            groups.append(current)
            current, rows = [], 0
        current.append(i)
        rows += n
    return groups + ([current] if current else [])


def _indexed(mbs: list[dict], idx: list[int]) -> list[dict]:
    return [{**mbs[i], "index": i} for i in idx]


def _reduced(sums: dict, dp_group) -> dict:
    """Sums of the last stage, summed over data parallelism, on every rank."""
    from megatron.core import parallel_state as ps

    if ps.is_pipeline_last_stage() and sums:
        keys = sorted(sums)
        vec = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=comm_device())
        if dp_group is not None and dist.get_world_size(dp_group) > 1:
            dist.all_reduce(vec, group=dp_group)
        sums = dict(zip(keys, vec.tolist()))
    return from_last_stage(sums if ps.is_pipeline_last_stage() else None)


def vision_opd(model, teacher_model, mbs: dict[str, list[dict]], *, distill, total_rows: int, dp_group) -> dict:
    """Gradient of the Vision-OPD loss (see the module docstring); returns summed metrics."""
    sums: dict[str, float] = {}
    teacher_seconds = 0.0

    def add(key, value):
        sums[key] = sums.get(key, 0.0) + float(value)

    loss_kwargs = dict(alpha=distill.alpha, top_k=distill.top_k, temperature=distill.temperature,
                       is_clip=distill.is_clip, reduction="sum", chunk_tokens=distill.loss_chunk_tokens,
                       inplace_grad=True)
    groups = _groups(mbs["student"], distill.teacher_logit_tokens)
    for g, idx in enumerate(groups):
        last_group = g == len(groups) - 1
        teacher_logits, teacher_argmax = {}, {}

        def keep(out, batch):
            teacher_logits[batch["index"]] = out.detach()
            teacher_argmax[batch["index"]] = vocab_parallel_argmax(out.detach())
            return out.sum() * 0, {}

        t0 = time.perf_counter()
        with torch.no_grad():
            forward_backward(teacher_model, _indexed(mbs["teacher"], idx), keep, forward_only=True)
        teacher_seconds += time.perf_counter() - t0
        scale = len(idx) / total_rows

        def student_loss(out, batch):
            i = batch["index"]
            logp, argmax = vocab_parallel_token_stats(out.detach(), batch["targets"], temperature=distill.temperature,
                                                       chunk_tokens=distill.loss_chunk_tokens)
            log_ratio = logp - batch["rollout_logprobs"].to(logp.dtype)  # logp_old - logp_rollout
            loss = vocab_parallel_generalized_jsd_loss(out, teacher_logits[i], torch.ones_like(batch["targets"], dtype=torch.bool),
                                                       log_ratio=log_ratio, **loss_kwargs)
            add("loss", loss.detach())
            add("agreement", (argmax == teacher_argmax[i]).sum())
            add("rollout_logprob_absdiff", log_ratio.abs().sum())
            add("rows", len(batch["targets"]))
            return loss * scale, {}

        anchor = distill.crop_anchor_weight > 0
        forward_backward(model, _indexed(mbs["student"], idx), student_loss, sync_grads=last_group and not anchor)
        if anchor:
            def anchor_loss(out, batch):
                loss = vocab_parallel_generalized_jsd_loss(out, teacher_logits[batch["index"]],
                                                           torch.ones_like(batch["targets"], dtype=torch.bool),
                                                           **loss_kwargs)
                add("loss/anchor", loss.detach())
                return loss * (scale * distill.crop_anchor_weight), {}

            forward_backward(model, _indexed(mbs["teacher"], idx), anchor_loss, sync_grads=last_group)
        teacher_logits.clear()
    out = _reduced(sums, dp_group)
    rows = max(out.pop("rows", 1.0), 1.0)
    metrics = {"loss": out["loss"] / total_rows, "agreement": out["agreement"] / rows, "time/teacher": teacher_seconds,
               "rollout_logprob_absdiff": out["rollout_logprob_absdiff"] / rows}
    if "loss/anchor" in out:
        metrics["loss/anchor"] = out["loss/anchor"] / total_rows
    return metrics


def crop_sft(model, mbs: dict[str, list[dict]], *, total_rows: int, dp_group) -> dict:
    """Gradient of the token-mean cross entropy of the reference responses after the crop prompt."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    sums: dict[str, float] = {}
    scale = len(mbs["teacher"]) / total_rows

    def ce(out, batch):
        loss = vocab_parallel_cross_entropy(out[None].float(), batch["targets"][None]).sum()
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        return loss * scale, {}

    forward_backward(model, _indexed(mbs["teacher"], list(range(len(mbs["teacher"])))), ce)
    out = _reduced(sums, dp_group)
    return {"loss": out["loss"] / total_rows}
