"""Probe prompts: two chat-templated problems with random images, as rollout requests and as the
matching Megatron inputs (the sync check and the rollout benchmark sample them)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from megatron_vopd.architecture import architecture
from megatron_vopd.data.chat_template import expand_image_pads, tokenize_prompt
from megatron_vopd.rollout.engine import RolloutRequest

PROBLEMS = ["<image>\nWhat colour is the object inside the red box?\n\nA. red\nB. green\nC. blue\nD. yellow\n\n"
            "Answer with the option's letter from the given choices.",
            "<image>\nDescribe the image."]


def probe_prompts(cfg, tokenizer, seed=0):
    """(RolloutRequest, pixel_values, image_grid_thw, expanded prompt ids) per problem, for the model
    config ``cfg`` (its family's chat template and image preprocessing)."""
    arch = architecture(cfg.arch)
    rng = np.random.RandomState(seed)
    processor = arch.image_processor(cfg, min_pixels=arch.min_pixels, max_pixels=arch.max_pixels)
    out = []
    for i, problem in enumerate(PROBLEMS):
        image = Image.fromarray((rng.rand(112 + 56 * i, 168, 3) * 255).astype("uint8"))
        ids = tokenize_prompt(problem, tokenizer, arch.tokenizer)
        feats = processor([image])
        n_tokens = int(feats["image_grid_thw"].prod()) // processor.merge_size**2
        expanded = expand_image_pads(np.asarray(ids), cfg.image_token_id, [n_tokens])
        out.append((RolloutRequest([int(t) for t in ids], [image]), torch.as_tensor(feats["pixel_values"]),
                    torch.as_tensor(feats["image_grid_thw"]), [int(t) for t in expanded]))
    return out
