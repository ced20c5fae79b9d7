"""Left- and right-padded batches give the same logits at the real tokens (a torchrun worker, one
process): Qwen3.5's Gated DeltaNet ignores the attention mask, so the model zeroes the padded
positions first. Prints RESULT {"max_abs_diff": ...}."""

import json
import sys

import torch

from megatron_vopd.architecture import architecture
from megatron_vopd.checks.common import forward_logits
from megatron_vopd.checks.layouts import make_batch
from megatron_vopd.config import ParallelConfig, load_model_config
from megatron_vopd.runtime import init_distributed


def main(recipe: str) -> int:
    cfg = load_model_config(recipe)
    cfg.transformer_impl = "local"
    init_distributed(1, 1, seed=3)
    arch = architecture(cfg.arch)
    model = arch.build_model(cfg, ParallelConfig()).eval()
    left = make_batch(cfg)  # the first sample is left-padded
    mask = left["attention_mask"]
    order = torch.argsort(1 - mask, dim=1, stable=True)  # the real tokens first: right padding
    ids = torch.gather(left["input_ids"], 1, order)
    right_mask = torch.gather(mask, 1, order)
    right = {**left, "input_ids": ids, "attention_mask": right_mask,
             "position_ids": arch.position_ids(cfg, ids, left["image_grid_thw"], right_mask)}
    a, b = forward_logits(model, left), forward_logits(model, right)
    diff = max((a[i][mask[i].bool()] - b[i][right_mask[i].bool()]).abs().max().item() for i in range(len(mask)))
    print("RESULT " + json.dumps({"max_abs_diff": diff, "padded": int((mask == 0).sum())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
