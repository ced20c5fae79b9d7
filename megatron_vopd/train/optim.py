"""The optimiser, its learning-rate schedule and the data-parallel gradient reduction.

AdamW over this rank's parameters (its TP shard of its PP stage), with Megatron's convention of no
weight decay on biases and norms (1-D parameters); the learning rate is a pure function of the step
(linear warm-up from 0, then constant or cosine down to ``min_lr``), so resuming needs only the
step. Gradients of a data-parallel replica are summed over the data-parallel group (the loss is
already normalised by the global token count) before clipping.

Megatron's distributed optimizer (sharded fp32 master weights) needs its DDP wrapper and CUDA
buffers; this module is the plain, device-agnostic optimizer the CPU path runs.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megatron_vopd.config import OptimizerConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr_at(0, cfg), betas=tuple(cfg.betas),
                             eps=cfg.eps, foreach=not torch.cuda.is_available() or None,
                             fused=torch.cuda.is_available() or None)


def lr_at(step: int, cfg: OptimizerConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up over ``warmup_steps``
    (step 0 gets lr/warmup), then constant, or cosine to ``min_lr`` at ``train_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.train_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def allreduce_gradients(model: torch.nn.Module, group) -> None:
    """Sum every gradient over ``group`` (the data-parallel group), flattened per dtype."""
    if group is None or dist.get_world_size(group) == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat, group=group)
        offset = 0
        for g in same:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
