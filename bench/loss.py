"""Benchmark: the chunked vocab-parallel distillation loss (world of one) against the naive dense one.

The workload: generalised JSD (alpha 0.5, top-k 100 + tail) forward + backward (gradient of the
student logits) for 4,096 response tokens over the Qwen vocabulary (151,936), fp32 inputs (``--bf16``
for bf16). Variants, each in its own fresh process:

* ``dense``: the reference ``generalized_jsd_loss``: full log_softmax of ``[4096, 151936]`` for
  student and teacher, gather, autograd (the naive computation);
* ``chunked``: ``vocab_parallel_generalized_jsd_loss`` with ``chunk_tokens`` positions at a time
  (default ``DistillConfig.loss_chunk_tokens``), gradient in a new ``[N, V]`` tensor;
* ``chunked-inplace``: the same with ``inplace_grad=True``: the gradient is written into the student
  logits' storage, as Megatron's vocab-parallel cross-entropy does (the production setting).

Memory: the peak resident set size of the process (``getrusage(RUSAGE_SELF).ru_maxrss``) minus its
RSS just before the loss, after the input logits are allocated and filled in place and the code
paths warmed up on a tiny input; i.e. the memory the loss adds on top of its inputs, gradient
included. With ``--device cuda``: the same on the GPU, from torch.cuda's peak allocated bytes.
Time: wall time of one forward + backward in the same process (synchronised on CUDA).

Prints one line per variant, ``MEMORY_RATIO`` and ``TIME_RATIO`` of ``chunked-inplace`` / ``dense``
(goal for memory: <= 0.25), and ``RESULT {json}`` with every number. ``--quick``: a small shape.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("dense", "chunked", "chunked-inplace")
PRODUCTION = "chunked-inplace"


def child(args) -> None:
    import resource
    import time

    import torch

    from megatron_vopd.distill import generalized_jsd_loss, vocab_parallel_generalized_jsd_loss

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.variant == "dense":
        def loss_fn(x, y, m):
            return generalized_jsd_loss(x, y, m, alpha=0.5, top_k=args.top_k)
    else:
        def loss_fn(x, y, m):
            return vocab_parallel_generalized_jsd_loss(x, y, m, alpha=0.5, top_k=args.top_k, chunk_tokens=args.chunk_tokens,
                                                       inplace_grad=args.variant == "chunked-inplace")

    def run(n, v):
        student = torch.empty(n, v, dtype=dtype, device=device).normal_(0, 2, generator=gen).requires_grad_()
        teacher = torch.empty(n, v, dtype=dtype, device=device).normal_(0, 2, generator=gen)
        mask = torch.ones(n, dtype=torch.bool, device=device)
        return student, teacher, mask

    gen = torch.Generator(device=device).manual_seed(0)
    x, y, m = run(8, 1024)  # warm-up: imports, kernels
    torch.autograd.grad(loss_fn(x, y, m), x)
    del x, y, m
    student, teacher, mask = run(args.tokens, args.vocab)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else _rss()
    start = time.perf_counter()
    loss = loss_fn(student, teacher, mask)
    (grad,) = torch.autograd.grad(loss, student)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps({"variant": args.variant, "seconds": seconds, "base_rss": base, "peak_rss": peak,
                                  "loss": loss.item(), "grad_abs_sum": grad.float().abs().sum().item()}), flush=True)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shape (512 tokens x 32,768 vocab, chunk 128)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--chunk-tokens", type=int, default=None, help="default: DistillConfig.loss_chunk_tokens")
    parser.add_argument("--bf16", action="store_true", help="bf16 input logits (computed in fp32)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # run one variant (child)
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.vocab, args.chunk_tokens = 512, 32768, args.chunk_tokens or 128
    if args.variant:
        return child(args)

    passed = [f"--tokens={args.tokens}", f"--vocab={args.vocab}", f"--top-k={args.top_k}"]
    passed += [f"--chunk-tokens={args.chunk_tokens}"] if args.chunk_tokens else []
    passed += ["--bf16"] if args.bf16 else []
    passed += [f"--device={args.device}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    results = {}
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--variant", variant, *passed], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{variant} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        r = json.loads(lines[-1][7:])
        r["added_bytes"] = r["peak_rss"] - r["base_rss"]
        results[variant] = r
        print(f"{variant:16s} loss {r['loss']:.6f}  time {r['seconds']:7.2f} s  "
              f"memory added {r['added_bytes'] / 2**30:6.2f} GiB (peak {r['peak_rss'] / 2**30:.2f} GiB)", flush=True)
    dense = results["dense"]
    for variant in VARIANTS[1:]:
        r = results[variant]
        r["memory_ratio"] = r["added_bytes"] / dense["added_bytes"]
        r["time_ratio"] = r["seconds"] / dense["seconds"]
        r["loss_abs_diff"] = abs(r["loss"] - dense["loss"])
        print(f"{variant:16s} / dense: memory {r['memory_ratio']:.3f}  time {r['time_ratio']:.3f}  "
              f"|loss diff| {r['loss_abs_diff']:.2e}")
    summary = {"device": args.device, "tokens": args.tokens, "vocab": args.vocab, "top_k": args.top_k,
               "chunk_tokens": args.chunk_tokens,
               "dtype": "bfloat16" if args.bf16 else "float32", "production": PRODUCTION, "variants": results,
               "memory_ratio": results[PRODUCTION]["memory_ratio"], "time_ratio": results[PRODUCTION]["time_ratio"]}
    print(f"MEMORY_RATIO {summary['memory_ratio']:.3f}")
    print(f"TIME_RATIO {summary['time_ratio']:.3f}")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
