"""Forward (and backward) of a list of micro-batches through Megatron's pipeline schedule.

Every rank of a pipeline gets the same micro-batches (dicts of tensors, batch-first). The first
stage embeds tokens and images; every stage needs the position ids and padding mask; the last stage
turns its output into a loss with ``loss_fn(output, batch) -> (loss, metrics)``. Works at PP=1 too
(the schedule without pipelining). Returns the list of metrics dicts of the last stage.

A training step may run several backward calls (teacher groups, the crop anchor) into one set of
gradients. With a Megatron DDP model, every call but the step's last runs under ``no_sync`` (the
fp32 grad buffers only accumulate); the last one (``sync_grads=True``) lets DDP start its bucketed
reduction during the backward pass of its last micro-batch when ``overlap_grad_reduce`` is on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask", "pixel_values", "image_grid_thw", "logit_positions",
                "vision_grid_thw", "image_source")


def forward_backward(model, microbatches: Sequence[dict], loss_fn: Callable, *, forward_only: bool = False,
                     sync_grads: bool = True) -> list:
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    batches = iter(microbatches)

    def forward_step(data_iterator, stage_model):
        batch = on_device(next(data_iterator), next(stage_model.parameters()).device)
        output = stage_model(**{k: batch.get(k) for k in MODEL_INPUTS})
        return output, lambda out: loss_fn(out, batch)

    first = microbatches[0]
    batch_size, seq_len = first["input_ids"].shape
    outer = contextlib.nullcontext()
    if isinstance(model, DistributedDataParallel) and not forward_only:
        # the schedule keeps all but the last micro-batch out of the reduction; a call that is not
        # the step's last keeps all of them out
        model.config.no_sync_func = model.no_sync if sync_grads else None
        outer = contextlib.nullcontext() if sync_grads else model.no_sync()
    with outer:
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=batches,
            model=[model],
            num_microbatches=len(microbatches),
            seq_length=seq_len,
            micro_batch_size=batch_size,
            forward_only=forward_only,
        )


def on_device(batch: dict, device: torch.device) -> dict:
    """The micro-batch's tensors on the model's device (batches are built on the CPU; a no-op there)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def from_last_stage(value):
    """A picklable value computed on the last pipeline stage, returned on every stage (collective)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    group = ps.get_pipeline_model_parallel_group()
    payload = [value]
    dist.broadcast_object_list(payload, src=dist.get_process_group_ranks(group)[-1], group=group)
    return payload[0]
