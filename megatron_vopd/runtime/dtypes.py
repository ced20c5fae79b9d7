"""The dtype names of the configs (``model.params_dtype``, ``rollout.dtype``) as torch dtypes, and the
spacing of bf16 numbers (the unit the bf16 tolerances of the checks and tests are stated in)."""

from __future__ import annotations

import torch

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at ``x`` (one unit in the last of its 8 significant bits)."""
    tiny = torch.finfo(torch.bfloat16).tiny
    return torch.exp2(torch.floor(torch.log2(x.float().abs().clamp_min(tiny))) - 7)


def torch_dtype(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(TORCH_DTYPES)}") from None
