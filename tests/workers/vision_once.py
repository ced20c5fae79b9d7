"""One vision pass per prompt gives the logits and gradients of encoding every sample's image (a torchrun worker,
one process, PP given by argv): for each family, two prompts x three samples collated by ``train.sequences``
(the unique images once, ``image_source``) against the same micro-batch with every sequence's patches repeated.
Prints RESULT {family: {"logits_equal": ..., "vision_grad_max_abs_diff": ..., "patches": [once, repeated]}}."""

import json
import sys

import numpy as np
import torch

from megatron_vopd.architecture import architecture
from megatron_vopd.checks.common import cross_entropy_loss, forward_logits
from megatron_vopd.config import ParallelConfig, load_model_config
from megatron_vopd.data.loader import EncodedView
from megatron_vopd.models.stage import expand_images
from megatron_vopd.runtime import init_distributed
from megatron_vopd.train.schedule import forward_backward
from megatron_vopd.train.sequences import Response, micro_batches, view_sequences


class Prompt:
    def __init__(self, full):
        self.full = full


def batch_of(cfg, arch, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    v = cfg.vision
    patch = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    prompts = []
    for grid in ([1, 8, 8], [1, 4, 8]):
        pads = grid[0] * grid[1] * grid[2] // v.spatial_merge_size ** 2
        ids = np.concatenate([rng.integers(0, 150000, 4), [cfg.vision_start_token_id], np.full(pads, cfg.image_token_id),
                              [cfg.vision_end_token_id], rng.integers(0, 150000, 3)]).astype(np.int64)
        prompts.append(Prompt(EncodedView(ids, rng.standard_normal((grid[1] * grid[2], patch)).astype(np.float32),
                                          np.asarray([grid], dtype=np.int64))))
    resps = [Response(p, rng.integers(0, 150000, 3 + j).astype(np.int64), np.zeros(3 + j, np.float32), False)
             for p in range(2) for j in range(3)]
    positions = lambda ids, grid, mask: arch.position_ids(cfg, ids, grid, mask)  # noqa: E731
    mbs = micro_batches({"full": view_sequences(prompts, resps, "full")}, budget=10**6, pad_id=0, position_ids=positions)
    return mbs["full"][0]


def grads(model, batch) -> dict:
    model.zero_grad()
    labels = torch.roll(batch["input_ids"], -1, dims=1)
    forward_backward(model, [{**batch, "targets": labels[batch["logit_positions"]]}], cross_entropy_loss)
    return {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("vision_model.") and p.grad is not None}


def main(pp: int) -> int:
    init_distributed(1, pp, seed=5)
    out = {}
    for recipe in ("tiny-qwen2.5-vl", "tiny-qwen3-vl"):
        cfg = load_model_config(recipe)
        cfg.transformer_impl = "local"
        arch = architecture(cfg.arch)
        model = arch.build_model(cfg, ParallelConfig(pipeline_model_parallel_size=pp))
        once = batch_of(cfg, arch, seed=1)
        repeated = {k: v for k, v in once.items() if k not in ("vision_grid_thw", "image_source")}
        repeated["pixel_values"] = expand_images(once["pixel_values"], once["vision_grid_thw"], once["image_source"], 1)
        model.eval()
        a, b = forward_logits(model, once), forward_logits(model, repeated)
        model.train()
        ga, gb = grads(model, once), grads(model, repeated)
        out[cfg.arch] = {"logits_equal": bool(torch.equal(a, b)), "logits_abs_max": a.abs().max().item(),
                         "vision_grad_max_abs_diff": max(((ga[n] - gb[n]).abs().max().item() for n in ga), default=None),
                         "vision_grad_abs_max": max((g.abs().max().item() for g in gb.values()), default=None),
                         "patches": [len(once["pixel_values"]), len(repeated["pixel_values"])],
                         "image_source": once["image_source"].tolist()}
    if torch.distributed.get_rank() == 0:  # the first stage: the vision tower's gradients
        print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1))
