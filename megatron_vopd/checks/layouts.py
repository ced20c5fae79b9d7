"""Layout parity check: the same weights give the same logits, loss and gradient norm at any TP x PP.

A torchrun worker: one forward (logits) and one forward+backward (loss, grad norm) of a model recipe
(default: the tiny Qwen2.5-VL) on an image+text batch at the layout given by --tp/--pp.
    torchrun --nproc-per-node 1 -m megatron_vopd.checks.layouts --save ref.pt
    torchrun --nproc-per-node 4 -m megatron_vopd.checks.layouts --tp 2 --pp 2 --compare ref.pt

--save FILE  (TP1PP1, one process): initialise the weights, write them and the results to FILE.
--compare FILE: load the weights from FILE, compute the same results, print the max differences as
  one JSON line ("RESULT {...}") on global rank 0 and exit 1 when they exceed the tolerance.
"""

import argparse
import json
import sys

import torch

from megatron_vopd.architecture import architecture
from megatron_vopd.bridge import MappingTable
from megatron_vopd.bridge.distribution import iter_full_parameters, load_full_state_dict
from megatron_vopd.checks.common import cross_entropy_loss, forward_logits, next_token_targets
from megatron_vopd.config import OptimizerConfig, ParallelConfig, load_model_config
from megatron_vopd.runtime import init_distributed
from megatron_vopd.train.optim import build_optimizer
from megatron_vopd.train.schedule import forward_backward, from_last_stage


def make_batch(model_cfg, seed=0):
    """Two samples, one image each (grids 8x8 and 12x8 patches), the first left-padded."""
    g = torch.Generator().manual_seed(seed)
    v = model_cfg.vision
    grids = torch.tensor([[1, 8, 8], [1, 12, 8]])
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    pixel_values = torch.randn(int(grids.prod(-1).sum()), patch_dim, generator=g)
    seqs = []
    for grid in grids.tolist():
        n_img = grid[0] * grid[1] * grid[2] // v.spatial_merge_size ** 2
        pre, post = torch.randint(0, 150000, (5,), generator=g), torch.randint(0, 150000, (9,), generator=g)
        seqs.append(torch.cat([pre, torch.tensor([model_cfg.vision_start_token_id]),
                               torch.full((n_img,), model_cfg.image_token_id),
                               torch.tensor([model_cfg.vision_end_token_id]), post]))
    seq_len = max(len(s) for s in seqs)
    input_ids = torch.zeros(2, seq_len, dtype=torch.long)
    attention_mask = torch.zeros(2, seq_len, dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, seq_len - len(s):] = s
        attention_mask[i, seq_len - len(s):] = 1
    loss_mask = attention_mask.clone()
    loss_mask[:, -1] = 0
    loss_mask[input_ids == model_cfg.image_token_id] = 0
    position_ids = architecture(model_cfg.arch).position_ids(model_cfg, input_ids, grids, attention_mask)
    batch = dict(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                 pixel_values=pixel_values, image_grid_thw=grids)
    return next_token_targets(batch, loss_mask)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--model", default="tiny-qwen2.5-vl")
    ap.add_argument("--save")
    ap.add_argument("--compare")
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--recompute", action="store_true", help="full activation recompute (model.recompute)")
    args = ap.parse_args()

    model_cfg = load_model_config(args.model)
    model_cfg.transformer_impl = "local"
    model_cfg.recompute = args.recompute
    parallel = ParallelConfig(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp)
    info = init_distributed(args.tp, args.pp, seed=1234, timeout_s=120)
    model = architecture(model_cfg.arch).build_model(model_cfg, parallel)
    table = MappingTable.for_config(model_cfg)
    if args.compare:
        ref = torch.load(args.compare, weights_only=True)
        load_full_state_dict(model, table, ref["weights"])
    batch = make_batch(model_cfg)

    model.eval()
    logits = forward_logits(model, batch)
    model.train()
    full_weights = {k: v.clone() for k, v in iter_full_parameters(model, table)}  # the step below moves the weights
    # the training path's gradient: Megatron DDP's fp32 main grads, the norm of Megatron's optimizer
    optimizer = build_optimizer(model, OptimizerConfig(warmup_steps=0, clip_grad=0.0), model_cfg)
    optimizer.zero_grad()
    metrics = forward_backward(optimizer.ddp, [batch], cross_entropy_loss)
    norm = optimizer.step(0)["grad_norm"]
    loss = from_last_stage(metrics[0]["loss"].item() if metrics else None)  # computed on the last stage

    if args.save:
        torch.save({"weights": full_weights, "logits": logits, "loss": loss, "grad_norm": norm}, args.save)
        if info.rank == 0:
            print("RESULT " + json.dumps({"saved": args.save, "loss": loss, "grad_norm": norm}), flush=True)
        return 0
    result = {
        "tp": args.tp, "pp": args.pp,
        "logits_max_abs_diff": (logits - ref["logits"]).abs().max().item(),
        "loss": loss, "loss_ref": ref["loss"], "loss_abs_diff": abs(loss - ref["loss"]),
        "grad_norm": norm, "grad_norm_ref": ref["grad_norm"], "grad_norm_abs_diff": abs(norm - ref["grad_norm"]),
        "weights_roundtrip_max_abs_diff": max((full_weights[k] - ref["weights"][k]).abs().max().item() for k in ref["weights"]),
    }
    ok = all(result[k] <= args.atol for k in ("logits_max_abs_diff", "loss_abs_diff", "grad_norm_abs_diff")) \
        and result["weights_roundtrip_max_abs_diff"] == 0.0 and set(full_weights) == set(ref["weights"])
    if info.rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
