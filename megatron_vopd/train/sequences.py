"""Rollouts -> training sequences -> micro-batches.

Every sampled response ``y`` of a prompt becomes two sequences with the same response tokens:

    full: [prompt with the FULL image's pads | y]          crop: [prompt with the CROP's pads | y]

The loss needs the next-token distributions at the positions that predict ``y``: position
``len(prompt) - 1 + i`` predicts ``y[i]``. Those are the ``logit_positions`` of a micro-batch; the
model computes its output layer only there and returns the rows batch-major, so the full-view and
crop-view rows of one micro-batch line up token for token when both hold the same samples in the
same order. Micro-batches are grouped once (by the longer, full-view, lengths) and the same grouping
serves the student on the full view, the teacher on the crop and the student's crop anchor.

A micro-batch is a dict of tensors: the model inputs (``input_ids``, ``position_ids``,
``attention_mask``, ``pixel_values``, ``image_grid_thw``, ``vision_grid_thw``, ``image_source``,
``logit_positions``; right padding) and, per response token, ``targets`` (the sampled ids), ``rollout_logprobs`` (the engine's log-probs of
them) and ``token_sample`` (the sample index the token belongs to).

One vision pass per prompt: the n samples of a prompt share its image, so a micro-batch carries each
prompt view's patches ONCE (``pixel_values``, their grids ``vision_grid_thw``); ``image_grid_thw`` has
one row per image of every sequence and ``image_source`` says which ``vision_grid_thw`` row it is. The
model encodes the unique images and hands each sequence its prompt's features (``models.stage.expand_images``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# (input_ids [B, S], image_grid_thw [N, 3], attention_mask [B, S]) -> position ids: the family's
# (Architecture.position_ids of the model config)
PositionIds = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainSequence:
    """One prompt view followed by one response."""

    sample: int  # index of the (prompt, response) pair in the step
    prompt: int  # index of the prompt in the step (its samples share the image)
    prompt_len: int
    input_ids: np.ndarray  # (prompt_len + R,) int64
    pixel_values: np.ndarray  # this view's image patches
    image_grid_thw: np.ndarray  # (1, 3)
    rollout_logprobs: np.ndarray  # (R,) float32, the engine's log-probs of the response

    @property
    def response(self) -> np.ndarray:
        return self.input_ids[self.prompt_len:]


@dataclass
class Response:
    """A sampled response of prompt ``prompt`` (index in the batch), cut to the trained length."""

    prompt: int
    token_ids: np.ndarray
    logprobs: np.ndarray
    truncated: bool  # longer than data.max_response_length: the rest is not trained on


def responses(samples: Sequence[Sequence], max_response_length: int) -> tuple[list[Response], int]:
    """Flatten ``samples[prompt][j]`` (objects with ``token_ids``/``logprobs``) into responses; empty
    responses are skipped and counted (returned second)."""
    out, empty = [], 0
    for p, per_prompt in enumerate(samples):
        for s in per_prompt:
            if not s.token_ids:
                empty += 1
                continue
            ids = np.asarray(s.token_ids[:max_response_length], dtype=np.int64)
            out.append(Response(p, ids, np.asarray(s.logprobs[:max_response_length], dtype=np.float32),
                                len(s.token_ids) > max_response_length))
    return out, empty


def view_sequences(prompts, resps: Sequence[Response], view: str) -> list[TrainSequence]:
    """``[prompt view | response]`` for every response; ``view`` is "full" or "crop"."""
    out = []
    for i, r in enumerate(resps):
        v = getattr(prompts[r.prompt], view)
        out.append(TrainSequence(i, r.prompt, len(v.input_ids), np.concatenate([v.input_ids, r.token_ids]),
                                 v.pixel_values, v.image_grid_thw, r.logprobs))
    return out


def share_of_prompts(resps: Sequence[Response], rank: int, size: int) -> list[int]:
    """The indices of the responses data-parallel rank ``rank`` of ``size`` trains on: whole prompts (a
    prompt's samples stay together, so they share one vision pass), consecutive, balanced by tokens.
    Every rank gets at least one prompt when there are at least ``size`` prompts with responses."""
    prompts: dict[int, list[int]] = {}
    for i, r in enumerate(resps):
        prompts.setdefault(r.prompt, []).append(i)
    if len(prompts) < size:
        raise RuntimeError(f"{len(prompts)} prompts have non-empty responses this step, fewer than the {size} "
                           "data-parallel replicas (each trains on whole prompts): raise data.prompts_per_step")
    tokens = [sum(len(resps[i].token_ids) for i in idx) for idx in prompts.values()]
    total, done, part, mine = sum(tokens), 0, -1, []
    for k, (idx, n) in enumerate(zip(prompts.values(), tokens)):
        wanted = int((done + n / 2) * size / total)  # the part this prompt's middle token falls in
        part = max(min(max(wanted, part), part + 1), size - (len(prompts) - k))  # no part skipped or left empty
        done += n
        if part == rank:
            mine += idx
    return mine


def group_by_tokens(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups whose padded size (count x longest) stays within ``budget`` tokens; a
    sequence longer than the budget forms a group of its own."""
    groups, current, longest = [], [], 0
    for i, n in enumerate(lengths):
        if current and max(longest, n) * (len(current) + 1) > budget:
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        groups.append(current)
    return groups


def collate(seqs: Sequence[TrainSequence], *, pad_id: int, position_ids: PositionIds) -> dict:
    """One right-padded micro-batch (see the module docstring)."""
    width = max(len(s.input_ids) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(seqs), width, dtype=torch.long)
    logit_positions = torch.zeros(len(seqs), width, dtype=torch.bool)
    for b, s in enumerate(seqs):
        input_ids[b, :len(s.input_ids)] = torch.from_numpy(s.input_ids)
        attention_mask[b, :len(s.input_ids)] = 1
        logit_positions[b, s.prompt_len - 1:len(s.input_ids) - 1] = True
    grid = torch.from_numpy(np.concatenate([s.image_grid_thw for s in seqs]))
    first = {}  # prompt -> its first sequence here: the one whose images the vision tower sees
    for s in seqs:
        first.setdefault(s.prompt, s)
    rows = {p: i for i, p in enumerate(first)}  # prompt -> its block of vision_grid_thw rows
    offsets = np.cumsum([0] + [len(s.image_grid_thw) for s in first.values()])
    source = [offsets[rows[s.prompt]] + k for s in seqs for k in range(len(s.image_grid_thw))]
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(input_ids, grid, attention_mask),
        pixel_values=torch.from_numpy(np.concatenate([s.pixel_values for s in first.values()])),
        image_grid_thw=grid,
        vision_grid_thw=torch.from_numpy(np.concatenate([s.image_grid_thw for s in first.values()])),
        image_source=torch.tensor(source, dtype=torch.long),
        logit_positions=logit_positions,
        targets=torch.from_numpy(np.concatenate([s.response for s in seqs])),
        rollout_logprobs=torch.from_numpy(np.concatenate([s.rollout_logprobs for s in seqs])),
        token_sample=torch.cat([torch.full((len(s.response),), s.sample, dtype=torch.long) for s in seqs]),
    )


def micro_batches(views: dict[str, list[TrainSequence]], *, budget: int, group_view: str = "full",
                  **collate_kwargs) -> dict[str, list[dict]]:
    """Micro-batches of every view in ``views`` (same samples, same order), grouped by ``group_view``."""
    groups = group_by_tokens([len(s.input_ids) for s in views[group_view]], budget)
    return {name: [collate([seqs[i] for i in g], **collate_kwargs) for g in groups] for name, seqs in views.items()}

