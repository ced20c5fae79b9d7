"""Parity check: a Megatron checkpoint gives the logits of its Hugging Face model.

A torchrun worker. Loads ``--ckpt`` (a Megatron checkpoint written by ``vopd convert``) at
``--tp``/``--pp``, runs the image+text batch of ``checks.layouts`` through it, and compares the
gathered logits with transformers' on ``--hf`` (eager attention, fp32):

    torchrun --nproc-per-node 2 -m megatron_vopd.checks.hf_parity --hf HF_DIR --ckpt CKPT --tp 2

Prints ``RESULT {"logits_max_abs_diff": ...}`` on rank 0; ``--save-logits FILE`` keeps ours.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.distributed as dist


def transformers_logits(hf_dir: str, batch: dict, arch) -> torch.Tensor:
    model = arch.hf_model_class().from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    image_token_id = model.config.image_token_id
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                    mm_token_type_ids=(batch["input_ids"] == image_token_id).int())
    return out.logits


def main(argv=None) -> int:
    from megatron_vopd.architecture import architecture
    from megatron_vopd.bridge.megatron_ckpt import load_model, read_model_config
    from megatron_vopd.checks.common import forward_logits
    from megatron_vopd.checks.layouts import make_batch
    from megatron_vopd.config import ParallelConfig
    from megatron_vopd.runtime import destroy_distributed, init_distributed

    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--save-logits")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--impl", default="auto", choices=["auto", "local", "transformer_engine"],
                    help="layer spec; auto (TE with CUDA and TE, else local) is what `vopd convert` built the checkpoint with")
    args = ap.parse_args(argv)

    # an fp32 parity check: no TF32 (cuDNN convolutions, the vision patch embedding, default to it)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    cfg = read_model_config(args.ckpt)
    cfg.transformer_impl = args.impl
    info = init_distributed(args.tp, args.pp, timeout_s=300)
    arch = architecture(cfg.arch)
    model = arch.build_model(cfg, ParallelConfig(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp),
                        init_weights=False)
    load_model(model, args.ckpt)
    model.eval()
    batch = make_batch(cfg)
    ours = forward_logits(model, batch).cpu()
    verdict = [0]
    if info.rank == 0:
        theirs = transformers_logits(args.hf, batch, arch)
        valid = batch["attention_mask"].bool()
        diff = (ours - theirs).abs()[valid].max().item()
        if args.save_logits:
            torch.save(ours, args.save_logits)
        print("RESULT " + json.dumps({"tp": args.tp, "pp": args.pp, "logits_max_abs_diff": diff,
                                      "logits_abs_max": theirs[valid].abs().max().item()}), flush=True)
        verdict = [0 if diff <= args.atol else 1]
    # every rank waits for rank 0's verdict and leaves the process group together: a rank that exits while
    # another still works can abort in gloo's teardown, and torchrun then kills the one printing the result
    dist.broadcast_object_list(verdict, src=0)
    destroy_distributed()
    return verdict[0]


if __name__ == "__main__":
    sys.exit(main())
