"""Attention masks shared by the model families."""

from __future__ import annotations

import torch
from torch import Tensor


def causal_padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """Megatron's boolean attention mask ``[B, 1, S, S]`` (True = masked) from a ``[B, S]`` 0/1 mask.

    With no padding, None: the decoder then applies its own causal mask."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    seq = attention_mask.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device).triu(1)
    keys_masked = ~attention_mask.bool()[:, None, None, :]
    return causal[None, None] | keys_masked
