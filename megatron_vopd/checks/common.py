"""What only the checks need: full-vocabulary logits of a micro-batch and a language-model loss."""

from __future__ import annotations

from collections.abc import Callable

import torch

from megatron_vopd.train.schedule import forward_backward, from_last_stage


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits from this TP rank's vocab-parallel slice (all-gather over TP)."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    return gather_from_tensor_model_parallel_region(logits) if ps.get_tensor_model_parallel_world_size() > 1 else logits


def forward_logits(model, batch: dict, reduce: Callable = lambda logits: logits):
    """No-grad forward of one micro-batch at every position; ``reduce`` is applied to the
    full-vocabulary logits ``[B, S, V]`` on the last stage and its result returned on every stage."""
    result = {}

    def keep(logits, _batch):
        result["value"] = reduce(gather_vocab(logits).detach())
        return logits.sum() * 0, {}

    with torch.no_grad():
        forward_backward(model, [{k: v for k, v in batch.items() if k != "logit_positions"}], keep, forward_only=True)
    return from_last_stage(result.get("value"))


def next_token_targets(batch: dict, loss_mask: torch.Tensor) -> dict:
    """The micro-batch with ``logit_positions`` = ``loss_mask`` and ``targets`` = the next token there
    (batch-major), the inputs of :func:`cross_entropy_loss`."""
    labels = torch.roll(batch["input_ids"], -1, dims=1)
    positions = loss_mask.bool()
    return {**batch, "logit_positions": positions, "targets": labels[positions]}


def cross_entropy_loss(logits: torch.Tensor, batch: dict):
    """Token-mean next-token cross entropy of one micro-batch from the vocab-parallel logits ``[N, V/TP]``
    at its ``logit_positions``."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    loss = vocab_parallel_cross_entropy(logits[None].float(), batch["targets"][None]).mean()
    return loss, {"loss": loss.detach()}
