"""TP parity of the vocab-parallel distillation loss against the dense reference (a torchrun worker).

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m megatron_vopd.checks.tp_loss

Every rank draws the same full ``[N, V]`` student/teacher logits (fp64), keeps its vocabulary slice
(Megatron's layout: rank r holds ids ``[r*V/TP, (r+1)*V/TP)``), runs
:func:`vocab_parallel_generalized_jsd_loss` on the slice with Megatron's TP group and compares the
loss and the all-gathered student-logit gradient with :func:`generalized_jsd_loss` on the full
logits, for top_k in {None, 5, 15} x alpha in {0, 0.5, 1} (plus temperature, in-place gradient,
"sum" reduction, nothing valid, bf16). Chunks of 4 tokens do not divide the 9 valid positions.
It also checks the no-grad token statistics the trainer logs and weighs with: the sampled tokens'
log-probs (:func:`vocab_parallel_token_stats`, at temperature 0.7) against ``log_softmax`` of the
full logits, and the argmax ids (:func:`vocab_parallel_argmax`) against ``argmax`` of the full logits.
Global rank 0 prints one line ``RESULT {json}``; the exit code is 1 when a difference exceeds the
tolerance (1e-6 in fp64; for bf16 1e-5 relative on the loss, 1e-2 of the largest gradient).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.distributed as dist

from megatron_vopd.distill.loss import generalized_jsd_loss
from megatron_vopd.distill.vocab_parallel import (vocab_parallel_argmax, vocab_parallel_generalized_jsd_loss,
                                                  vocab_parallel_token_stats)
from megatron_vopd.runtime import init_distributed

N, V = 13, 22
TOL = 1e-6


def cases():
    for top_k in (None, 5, 15):
        for alpha in (0.0, 0.5, 1.0):
            yield dict(top_k=top_k, alpha=alpha)
    yield dict(top_k=5, alpha=0.5, temperature=0.7, inplace_grad=True, reduction="sum")
    yield dict(top_k=None, alpha=0.3, temperature=1.3, inplace_grad=True)
    yield dict(top_k=5, alpha=0.5, empty=True)
    yield dict(top_k=5, alpha=0.5, dtype="bfloat16")
    yield dict(top_k=None, alpha=0.5, dtype="bfloat16")


def run_case(case: dict, tp_rank: int, tp_size: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.get("dtype", "float64"))
    student = (torch.randn(N, V, generator=g, dtype=torch.float64) * 3).to(dtype)
    teacher = (torch.randn(N, V, generator=g, dtype=torch.float64) * 3).to(dtype)
    mask = torch.rand(N, generator=g) < 0.7
    mask[:2] = True  # at least a few valid tokens, not all consecutive
    if case.get("empty"):
        mask[:] = False
    log_ratio = (torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64))
    kw = dict(alpha=case["alpha"], top_k=case["top_k"], temperature=case.get("temperature", 1.0),
              log_ratio=log_ratio, reduction=case.get("reduction", "mean"))

    full = student.clone().requires_grad_()
    ref_loss = generalized_jsd_loss(full, teacher, mask, **kw)
    ref_loss.backward()

    width = V // tp_size
    cols = slice(tp_rank * width, (tp_rank + 1) * width)
    leaf = student[:, cols].clone().requires_grad_()
    local = leaf * 1  # a non-leaf, like the output layer's logits (needed for inplace_grad)
    loss = vocab_parallel_generalized_jsd_loss(local, teacher[:, cols].clone(), mask, chunk_tokens=4,
                                               inplace_grad=case.get("inplace_grad", False), **kw)
    loss.backward()
    parts = [torch.empty_like(leaf.grad) for _ in range(tp_size)]
    dist.all_gather(parts, leaf.grad.contiguous())
    grad = torch.cat(parts, dim=-1)

    diffs = torch.tensor([(loss.detach() - ref_loss.detach()).abs().item(),
                          (grad.double() - full.grad.double()).abs().max().item(),
                          full.grad.double().abs().max().item()], dtype=torch.float64)
    dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    loss_diff, grad_diff, grad_scale = diffs.tolist()
    if dtype == torch.float64:
        ok = loss_diff <= TOL and grad_diff <= TOL
    else:  # computed in fp32 from the same bf16 logits; the gradient comes back rounded to bf16
        ok = loss_diff <= 1e-5 * max(1.0, abs(ref_loss.item())) and grad_diff <= 1e-2 * grad_scale
    return {**case, "loss": ref_loss.item(), "loss_diff": loss_diff, "grad_diff": grad_diff, "ok": ok}


def run_stats(tp_rank: int, tp_size: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, V, (N,), generator=g)
    width = V // tp_size
    local = logits[:, tp_rank * width:(tp_rank + 1) * width].clone()
    logp, argmax = vocab_parallel_token_stats(local, targets, temperature=0.7, chunk_tokens=4)
    ref = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, targets[:, None])[:, 0]
    logp_diff = (logp - ref).abs().max().item()
    argmax_ok = torch.equal(argmax, logits.argmax(-1)) and torch.equal(vocab_parallel_argmax(local), logits.argmax(-1))
    return {"stats": True, "logprob_diff": logp_diff, "argmax_equal": argmax_ok, "ok": logp_diff <= TOL and argmax_ok}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size (V=%d must divide)" % V)
    args = parser.parse_args(argv)
    info = init_distributed(tp=args.tp, pp=1, seed=0)
    results = [run_case(case, info.tp_rank, info.tp_size, seed=i) for i, case in enumerate(cases())]
    fp64 = [r for r in results if r.get("dtype", "float64") == "float64"]
    stats = run_stats(info.tp_rank, info.tp_size, seed=len(results))
    summary = {"tp": info.tp_size, "cases": results, "stats": stats, "ok": all(r["ok"] for r in results) and stats["ok"],
               "max_loss_diff": max(r["loss_diff"] for r in fp64), "max_grad_diff": max(r["grad_diff"] for r in fp64)}
    if info.rank == 0:
        print("RESULT " + json.dumps(summary), flush=True)
    dist.barrier()
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
