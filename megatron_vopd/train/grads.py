"""Gradient norm and clipping over the model-parallel group, in plain torch.

Megatron's own clip asserts CUDA tensors; this is the same computation for any device: each
parameter counted once (TP-replicated parameters only on TP rank 0, a pipeline-shared embedding
copy only on its first stage), squares summed locally and all-reduced over the TP x PP group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_vopd.runtime.distributed import comm_device


def _counted_once(param) -> bool:
    from megatron.core import parallel_state as ps

    if getattr(param, "shared_embedding", False) and not ps.is_pipeline_first_stage():
        return False
    return getattr(param, "tensor_model_parallel", False) or ps.get_tensor_model_parallel_rank() == 0


def grad_norm(model) -> float:
    from megatron.core import parallel_state as ps

    grads = [p.main_grad if hasattr(p, "main_grad") else p.grad for p in model.parameters() if _counted_once(p)]
    grads = [g.detach() for g in grads if g is not None]
    total = torch.zeros((), dtype=torch.float64, device=comm_device())
    if grads:  # per-tensor norms in the gradients' dtype (one fused pass), their squares summed in fp64
        norms = torch.stack(torch._foreach_norm(grads)).double()
        total += norms.pow(2).sum().to(total.device)
    dist.all_reduce(total, group=ps.get_model_parallel_group())
    return float(total.sqrt())


@torch.no_grad()
def clip_grad_norm(model, max_norm: float) -> float:
    """Scale all gradients so their global norm is at most ``max_norm``; returns the norm before."""
    norm = grad_norm(model)
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for p in model.parameters():
            g = p.main_grad if hasattr(p, "main_grad") else p.grad
            if g is not None:
                g.mul_(scale)
    return norm
