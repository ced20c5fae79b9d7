"""What one optimiser step trains on: each objective makes the step's responses and computes the gradient.

An objective is a small object the trainer's loop calls without knowing which one it is:

    resps, metrics = objective.responses(prompts, sample)   # sample: the rollout engine (if it needs one)
    metrics |= objective.gradient(student, teacher, mbs, total_tokens=..., dp_group=...)

``needs_engine`` says whether it samples (and so whether the trainer starts, syncs and evaluates an
engine); ``teacher_mode`` which teacher weights it needs. ``mbs`` holds the micro-batches of both
image views, ``mbs["full"]`` ([full-image prompt | response]) and ``mbs["crop"]`` ([crop prompt |
response]), the same samples in the same order.

``vision_opd`` (VisionOPD): label-free on-policy self-distillation. For each group of micro-batches (at
most ``distill.teacher_logit_tokens`` response tokens, which bounds the teacher logits kept in memory):

1. the teacher forward-only on the crop view (teacher weights: the student's own, EMA or fixed),
   keeping its vocab-parallel logits at the response tokens;
2. the student forward/backward on the full view, loss at the last pipeline stage: generalised JSD
   (``distill.*``), importance weight ``min(exp(logp_old - logp_rollout), is_clip)`` (strictly
   on-policy, so logp_theta = logp_old);
3. when ``distill.crop_anchor_weight`` > 0: the student on the crop view, same divergence to the same
   teacher logits (the label-free crop anchor), times the weight.

``crop_sft`` (CropSFT): supervised cross entropy of the reference response (``data.synth``) after the
crop prompt (the demo's labelled warm-up that creates the regional-to-global gap; never part of
Vision-OPD itself).

Losses are sums over response tokens divided by the step's global token count (a token mean over the
whole batch, all data-parallel replicas); Megatron's schedule divides a micro-batch loss by the
number of micro-batches in the call, which ``scale`` undoes. Metrics are sums on the last stage,
reduced over data parallelism and returned on every rank.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import torch
import torch.distributed as dist

from megatron_vopd.data.synth import reference_response_ids
from megatron_vopd.distill.vocab_parallel import (vocab_parallel_argmax, vocab_parallel_generalized_jsd_loss,
                                                  vocab_parallel_token_stats)
from megatron_vopd.eval.accuracy import parse_choice
from megatron_vopd.runtime.distributed import comm_device
from megatron_vopd.train.schedule import forward_backward, from_last_stage
from megatron_vopd.train.sequences import Response, responses


def _groups(mbs: list[dict], token_budget: int) -> list[list[int]]:
    """Consecutive micro-batches holding at most ``token_budget`` response tokens (at least one each)."""
    groups, current, tokens = [], [], 0
    for i, mb in enumerate(mbs):
        n = len(mb["targets"])
        if current and tokens + n > token_budget:
            groups.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += n
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


class VisionOPD:
    """Label-free on-policy self-distillation (the module docstring, steps 1-3)."""

    name, needs_engine = "vision_opd", True

    def __init__(self, cfg, tokenizer):
        self.distill, self.tokenizer = cfg.distill, tokenizer
        self.max_response_length = cfg.data.max_response_length
        self.teacher_mode = cfg.distill.teacher

    def responses(self, prompts, sample) -> tuple[list[Response], dict]:
        """The engine's samples of the full-image prompts (empty ones skipped and counted)."""
        t0 = time.perf_counter()
        samples = sample(prompts)
        seconds = time.perf_counter() - t0
        resps, empty = responses(samples, self.max_response_length)
        return resps, {"time/rollout": seconds, **self.answer_stats(samples, prompts), "empty_responses": empty,
                       "truncated": sum(r.truncated for r in resps)}

    def answer_stats(self, samples, prompts) -> dict:
        """Entropy (nats) of the parsed answers over all samples, and the share of samples that name no
        option: with a balanced dataset a model that reads the image keeps the entropy near log(4); a
        collapsed one answers the same letter whatever the image."""
        answers = [[parse_choice(self.tokenizer.decode(s.token_ids, skip_special_tokens=True), options=p.options)
                    for s in per] for per, p in zip(samples, prompts)]
        counts = Counter(a for per in answers for a in per)
        total = sum(counts.values())
        entropy = sum(c / total * math.log(total / c) for c in counts.values()) if total else 0.0
        return {"answer_entropy": entropy, "unparsed": counts.get(None, 0) / max(total, 1)}

    def gradient(self, model, teacher_model, mbs: dict[str, list[dict]], *, total_tokens: int, dp_group) -> dict:
        """Gradient of the Vision-OPD loss (see the module docstring); returns summed metrics."""
        distill = self.distill
        sums: dict[str, float] = {}
        teacher_seconds = 0.0

        def add(key, value):
            sums[key] = sums.get(key, 0.0) + float(value)

        loss_kwargs = dict(alpha=distill.alpha, top_k=distill.top_k, temperature=distill.temperature,
                           is_clip=distill.is_clip, reduction="sum", chunk_tokens=distill.loss_chunk_tokens,
                           inplace_grad=True)
        groups = _groups(mbs["full"], distill.teacher_logit_tokens)
        for g, idx in enumerate(groups):
            last_group = g == len(groups) - 1
            teacher_logits, teacher_argmax = {}, {}

            def keep(out, batch):
                teacher_logits[batch["index"]] = out.detach()
                teacher_argmax[batch["index"]] = vocab_parallel_argmax(out.detach())
                return out.sum() * 0, {}

            t0 = time.perf_counter()
            with torch.no_grad():
                forward_backward(teacher_model, _indexed(mbs["crop"], idx), keep, forward_only=True)
            teacher_seconds += time.perf_counter() - t0
            scale = len(idx) / total_tokens

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
                add("tokens", len(batch["targets"]))
                return loss * scale, {}

            anchor = distill.crop_anchor_weight > 0
            forward_backward(model, _indexed(mbs["full"], idx), student_loss, sync_grads=last_group and not anchor)
            if anchor:
                def anchor_loss(out, batch):
                    loss = vocab_parallel_generalized_jsd_loss(out, teacher_logits[batch["index"]],
                                                               torch.ones_like(batch["targets"], dtype=torch.bool),
                                                               **loss_kwargs)
                    add("loss/anchor", loss.detach())
                    return loss * (scale * distill.crop_anchor_weight), {}

                forward_backward(model, _indexed(mbs["crop"], idx), anchor_loss, sync_grads=last_group)
            teacher_logits.clear()
        out = _reduced(sums, dp_group)
        tokens = max(out.pop("tokens", 1.0), 1.0)
        metrics = {"loss": out["loss"] / total_tokens, "agreement": out["agreement"] / tokens,
                   "time/teacher": teacher_seconds, "rollout_logprob_absdiff": out["rollout_logprob_absdiff"] / tokens}
        if "loss/anchor" in out:
            metrics["loss/anchor"] = out["loss/anchor"] / total_tokens
        return metrics

    def warning(self, step: int, metrics: dict) -> str | None:
        if metrics["loss"] < self.distill.collapse_loss and metrics["answer_entropy"] < 0.5:
            return (f"loss {metrics['loss']:.2e} while the answers barely vary (entropy {metrics['answer_entropy']:.2f} "
                    "nats): the student and teacher may have collapsed to an image-independent answer (see "
                    "docs/method.md; use distill.teacher=ema and a crop anchor)")
        return None


class CropSFT:
    """Supervised warm-up on the crops with the reference responses (the demo's stage a)."""

    name, needs_engine, teacher_mode = "crop_sft", False, "current"

    def __init__(self, cfg, tokenizer):
        self.tokenizer, self.answer_format = tokenizer, cfg.data.answer_format

    def responses(self, prompts, sample) -> tuple[list[Response], dict]:
        """The reference response of every prompt (no sampling)."""
        resps = []
        for i, p in enumerate(prompts):
            ids = reference_response_ids(p.options, p.answer, self.answer_format, self.tokenizer)
            resps.append(Response(i, ids, np.zeros(len(ids), np.float32), False))
        return resps, {}

    def gradient(self, model, teacher_model, mbs: dict[str, list[dict]], *, total_tokens: int, dp_group) -> dict:
        """Gradient of the token-mean cross entropy of the reference responses after the crop prompt."""
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        sums: dict[str, float] = {}
        scale = len(mbs["crop"]) / total_tokens

        def ce(out, batch):
            loss = vocab_parallel_cross_entropy(out[None].float(), batch["targets"][None]).sum()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            return loss * scale, {}

        forward_backward(model, _indexed(mbs["crop"], list(range(len(mbs["crop"])))), ce)
        out = _reduced(sums, dp_group)
        return {"loss": out["loss"] / total_tokens}

    def warning(self, step: int, metrics: dict) -> str | None:
        return None


OBJECTIVES = {"vision_opd": VisionOPD, "crop_sft": CropSFT}


def build_objective(cfg, tokenizer):
    """The objective ``cfg.objective`` names."""
    return OBJECTIVES[cfg.objective](cfg, tokenizer)
