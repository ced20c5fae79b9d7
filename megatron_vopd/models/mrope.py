"""Multimodal RoPE position ids of the Qwen-VL families for images (3 rows: temporal, height, width).

Text tokens advance all three rows together by one. An image of ``grid_thw = (t, h, w)`` patches is
``t * h * w / merge**2`` consecutive image tokens; they all start at the current position p, the
temporal row is ``p + ti``, the height row ``p + hi`` and the width row ``p + wi`` over the merged
grid, and the text after the image resumes at ``p + max(h, w) / merge``. Padding (attention mask 0)
gets position 0. This is what transformers' ``get_rope_index`` computes for images; the test suite
checks equality with it.

``InterleavedMRoPE`` is the rotary embedding of those positions for the families whose T/H/W
frequency sections are interleaved (Qwen3.5, Qwen3-VL).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _image_positions(start: int, grid_thw, merge: int) -> torch.Tensor:
    t, h, w = (int(x) for x in grid_thw)
    h, w = h // merge, w // merge
    ti = torch.arange(t).view(t, 1, 1).expand(t, h, w)
    hi = torch.arange(h).view(1, h, 1).expand(t, h, w)
    wi = torch.arange(w).view(1, 1, w).expand(t, h, w)
    return torch.stack([ti, hi, wi]).reshape(3, -1) + start


def mrope_position_ids(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    *,
    image_token_id: int,
    spatial_merge_size: int = 2,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return position ids ``[3, B, S]`` for a batch of token ids ``[B, S]`` (left or right padded).

    Images are consumed from ``image_grid_thw`` in batch-major order, as the vision tower emits them.
    A run of image tokens whose length does not match its grid raises ``ValueError``.
    """
    batch, seq = input_ids.shape
    out = torch.zeros(3, batch, seq, dtype=torch.long)
    grids = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    for b in range(batch):
        valid = attention_mask[b].bool() if attention_mask is not None else torch.ones(seq, dtype=torch.bool)
        ids = input_ids[b][valid].tolist()
        pieces, pos, i = [], 0, 0
        while i < len(ids):
            j = i
            is_image = ids[i] == image_token_id
            while j < len(ids) and (ids[j] == image_token_id) == is_image:
                j += 1
            if not is_image:
                pieces.append(torch.arange(pos, pos + j - i).expand(3, -1))
                pos += j - i
            else:
                grid = next(grids, None)
                if grid is None:
                    raise ValueError(f"sample {b}: more image-token runs than entries in image_grid_thw")
                expected = grid[0] * grid[1] * grid[2] // spatial_merge_size**2
                if j - i != expected:
                    raise ValueError(f"sample {b}: image-token run of {j - i} tokens at {i}, grid {grid} needs {expected}")
                pieces.append(_image_positions(pos, grid, spatial_merge_size))
                pos += max(grid[1], grid[2]) // spatial_merge_size
            i = j
        if pieces:
            out[:, b, valid] = torch.cat(pieces, dim=1)
    if next(grids, None) is not None:
        raise ValueError("image_grid_thw has more entries than image-token runs in input_ids")
    return out


class InterleavedMRoPE(torch.nn.Module):
    """Multimodal rotary embedding with the T/H/W sections interleaved over the rotary frequencies
    (frequency j: height when j % 3 == 1 and j < 3 * sections[1], width when j % 3 == 2 and
    j < 3 * sections[2], else time), as transformers' Qwen3.5 and Qwen3-VL;
    megatron-core's has contiguous sections.
    Called as GPTModel calls its mrope module: ``(position_ids [3, B, S], sections) -> [S, B, 1, rot_dim]``."""

    def __init__(self, rotary_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: Tensor, mrope_section, *_, **__) -> Tensor:
        freqs = position_ids.to(self.inv_freq.device).float()[..., None] * self.inv_freq  # [3, B, S, rot/2]
        half = freqs.shape[-1]
        j = torch.arange(half, device=freqs.device)
        source = torch.zeros(half, dtype=torch.long, device=freqs.device)
        source[(j % 3 == 1) & (j < 3 * mrope_section[1])] = 1
        source[(j % 3 == 2) & (j < 3 * mrope_section[2])] = 2
        picked = freqs.gather(0, source.view(1, 1, 1, half).expand(1, *freqs.shape[1:]))[0]  # [B, S, rot/2]
        emb = torch.cat((picked, picked), dim=-1)
        return emb.transpose(0, 1)[:, :, None, :].contiguous()
