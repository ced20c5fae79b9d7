"""CPU model-FLOP utilisation of a forward+backward step of the Qwen2.5-VL language decoder.

    .venv/bin/python bench/mfu.py            # hidden 1024, 8 layers, 1 x 2048 text tokens, vocab 151936
    .venv/bin/python bench/mfu.py --quick    # a tiny variant that runs in seconds (for tests)

The product is the RATIO printed last, ``MFU_RATIO`` = model FLOP/s / FLOP/s of a large fp32
``torch.mm`` measured in the same run with the same threads (absolute times on a small CPU are noise;
the ratio says how close the step gets to the machine's matmul speed).

FLOPs counted (a multiply-add = 2 FLOPs; h hidden, a query heads, g kv groups, d head dim,
f ffn width, s sequence length, V vocabulary), per token, forward, per layer:

    QKV projection         2 * h * (a*d + 2*g*d)
    attention              2 * 2 * s * a*d     (scores Q K^T and the weighted sum of V)
    output projection      2 * a*d * h
    gated MLP              3 * 2 * h * f       (gate, up and down projections)
plus once per token the LM head 2 * h * V. Backward = 2 x forward, so a step = 3 x forward.
Attention counts the FULL s x s matrix although the mask is causal (the Megatron / PaLM MFU
convention; Megatron's local attention also computes the full masked matrix). Not counted:
norms, RoPE, softmax, SiLU, cross entropy, the embedding lookup and biases (all O(s*h) or O(s*V)).

Model FLOP/s = step FLOPs / median step time, a step being ``forward_backward`` with
a next-token cross entropy on one micro-batch of text-only tokens (no image, so the vision tower does
not run), gradients zeroed between steps. The matmul baseline is measured before the steps, after
each step and after all of them (so both see the same load from other processes on a shared
machine); the median of all its runs is used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from megatron_vopd.config import ParallelConfig, load_model_config
from megatron_vopd.architecture import architecture
from megatron_vopd.runtime import init_distributed
from megatron_vopd.train.schedule import forward_backward


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", type=int, default=2048, help="tokens in the micro-batch (batch size 1)")
    ap.add_argument("--hidden", type=int, default=1024, help="decoder width (head dim 64, kv groups = heads / 2)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=None, help="gated-MLP width (default 2.75 x hidden, rounded to 256)")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--matmul", type=int, default=2048, help="side n of the n x n @ n x n baseline matmul")
    ap.add_argument("--matmul-runs", type=int, default=5, help="baseline runs before and after the steps (2 after each step)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: cores)")
    ap.add_argument("--quick", action="store_true", help="tiny fast variant: hidden 128, 2 layers, 128 tokens")
    args = ap.parse_args(argv)
    if args.quick:
        args.seq, args.hidden, args.layers, args.steps, args.warmup, args.matmul = 128, 128, 2, 2, 1, 512
        args.vocab = min(args.vocab, 4096)
    return args


def model_config(args):
    cfg = load_model_config("tiny-qwen2.5-vl")
    head_dim = 64
    heads = max(1, args.hidden // head_dim)
    half = head_dim // 2
    cfg.hidden_size, cfg.num_layers, cfg.vocab_size = args.hidden, args.layers, args.vocab
    cfg.num_attention_heads, cfg.num_query_groups = heads, max(1, heads // 2)
    cfg.kv_channels = head_dim
    cfg.mrope_section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    cfg.ffn_hidden_size = args.ffn or max(256, round(2.75 * args.hidden / 256) * 256)
    cfg.vision.out_hidden_size = args.hidden  # the tower is built (never run): keep it consistent
    cfg.transformer_impl, cfg.params_dtype = "local", "float32"
    return cfg


def flops_split(cfg, seq):
    """Forward FLOPs of one sequence of ``seq`` tokens, by component (see the module docstring)."""
    h, a, g, d, f, V, L = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim,
                           cfg.ffn_hidden_size, cfg.vocab_size, cfg.num_layers)
    per_token = {
        "qkv_proj": L * 2 * h * (a * d + 2 * g * d),
        "attention": L * 2 * 2 * seq * a * d,
        "out_proj": L * 2 * a * d * h,
        "mlp": L * 3 * 2 * h * f,
        "lm_head": 2 * h * V,
    }
    return {k: v * seq for k, v in per_token.items()}


def make_batch(cfg, seq):
    g = torch.Generator().manual_seed(0)
    # text only: ids below the special tokens (and below the vocabulary)
    input_ids = torch.randint(0, min(cfg.vocab_size, 150000), (1, seq), generator=g)
    positions = torch.ones(1, seq, dtype=torch.bool)
    positions[:, -1] = False  # every position that has a next token
    return dict(input_ids=input_ids, logit_positions=positions, targets=input_ids[0, 1:],
                position_ids=architecture(cfg.arch).position_ids(cfg, input_ids, None))


def next_token_loss(logits, batch):
    """Token-mean cross entropy of the next tokens (vocab-parallel logits [N, V] at logit_positions)."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    loss = vocab_parallel_cross_entropy(logits[None].float(), batch["targets"][None]).mean()
    return loss, {"loss": loss.detach()}


def matmul_runs(n, runs):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t0))
    return rates


def main(argv=None):
    args = parse_args(argv)
    info = init_distributed(1, 1, seed=1234)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()} (cores available: {len(os.sched_getaffinity(0))}), "
          f"torch {torch.__version__}, device {info.device}", flush=True)

    cfg = model_config(args)
    print(f"model: hidden {cfg.hidden_size}, layers {cfg.num_layers}, heads {cfg.num_attention_heads}, "
          f"kv groups {cfg.num_query_groups}, head dim {cfg.head_dim}, ffn {cfg.ffn_hidden_size}, "
          f"vocab {cfg.vocab_size}, mrope {cfg.mrope_section}, seq 1 x {args.seq}, float32, local", flush=True)
    model = architecture(cfg.arch).build_model(cfg, ParallelConfig())
    model.train()
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vision_model."))
    batch = make_batch(cfg, args.seq)

    before = matmul_runs(args.matmul, args.matmul_runs)
    print(f"matmul {args.matmul}^3 before: median {statistics.median(before) / 1e9:.1f} GFLOP/s", flush=True)

    split = flops_split(cfg, args.seq)
    step_flops = 3 * sum(split.values())
    times, between = [], []
    for i in range(args.warmup + args.steps):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        metrics = forward_backward(model, [batch], next_token_loss)
        dt = time.perf_counter() - t0
        timed = i >= args.warmup
        if timed:
            times.append(dt)
        between += matmul_runs(args.matmul, 2)
        print(f"step {i + 1}/{args.warmup + args.steps} ({'timed' if timed else 'warm-up'}): {dt:.2f} s, "
              f"loss {metrics[0]['loss'].item():.4f}, {step_flops / dt / 1e9:.1f} GFLOP/s", flush=True)

    after = matmul_runs(args.matmul, args.matmul_runs)
    print(f"matmul {args.matmul}^3 after: median {statistics.median(after) / 1e9:.1f} GFLOP/s", flush=True)

    step_s = statistics.median(times)
    model_rate, mm_rate = step_flops / step_s, statistics.median(before + between + after)
    ratio = model_rate / mm_rate

    total_fwd = sum(split.values())
    print(f"\nFLOPs per step (1 x {args.seq} tokens; step = 3 x forward)")
    print(f"  {'component':<12}{'fwd GFLOP':>12}{'step GFLOP':>12}{'share':>8}")
    for name, fl in split.items():
        print(f"  {name:<12}{fl / 1e9:>12.2f}{3 * fl / 1e9:>12.2f}{100 * fl / total_fwd:>7.1f}%")
    print(f"  {'total':<12}{total_fwd / 1e9:>12.2f}{step_flops / 1e9:>12.2f}{100.0:>7.1f}%")
    rows = [("decoder parameters (no vision tower)", f"{n_params / 1e6:.1f} M"),
            (f"step time (median of {len(times)})", f"{step_s:.3f} s"),
            ("model FLOP/s", f"{model_rate / 1e9:.2f} GFLOP/s"),
            (f"matmul {args.matmul}^3 FLOP/s (median of {len(before + between + after)})", f"{mm_rate / 1e9:.2f} GFLOP/s"),
            ("LM-head share of the FLOPs", f"{100 * split['lm_head'] / total_fwd:.1f}%"),
            ("MFU ratio (model / matmul FLOP/s)", f"{ratio:.4f}")]
    print()
    for label, value in rows:
        print(f"  {label:<42}{value:>16}")
    result = dict(
        threads=torch.get_num_threads(), seq=args.seq, hidden=cfg.hidden_size, layers=cfg.num_layers,
        heads=cfg.num_attention_heads, kv_groups=cfg.num_query_groups, head_dim=cfg.head_dim,
        ffn=cfg.ffn_hidden_size, vocab=cfg.vocab_size, params=n_params,
        fwd_flops=split, step_flops=step_flops, lm_head_share=split["lm_head"] / total_fwd,
        step_times_s=times, step_s=step_s, model_flops_per_s=model_rate,
        matmul_n=args.matmul, matmul_flops_per_s_before=before, matmul_flops_per_s_between_steps=between,
        matmul_flops_per_s_after=after,
        matmul_flops_per_s=mm_rate, mfu_ratio=ratio,
    )
    print("RESULT " + json.dumps(result), flush=True)
    print(f"MFU_RATIO {ratio:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
