"""Benchmark: rollout tokens/s of 2 engines (2 processes) over 1 engine, through the trainer's rollout path.

The tiny Qwen2.5-VL (random weights, the same on every rank), image+text prompts, ``--prompts`` x ``--samples``
samples of up to ``--max-tokens`` tokens, temperature 1.0, each request seeded as the trainer seeds it
(``rollout.layout.request_seed``). Each run is a torchrun world whose ranks host one engine each; the
prompts are split over the engines and the samples all-gathered (``rollout.layout.generate_split``, what
``Trainer.rollout`` calls). On the CPU the engines split the machine's cores. Engine start-up is excluded.
Three runs: 2 engines (each on one rank's half of the cores, as each would hold one rank's GPU); 1 engine on
one rank's half (what one engine on rank 0 had while the other rank's device waited, before engines were
spread over every rank); 1 engine on the whole machine. Prints ENGINES_RATIO (2 engines / 1 engine on one
rank's share; goal >= 1.5 on 2 cores), SAME_CORES_RATIO (2 engines / 1 engine on every core: on a CPU the
engines only re-divide the same cores, so ~1 means the split costs nothing) and, from the whole-machine run,
ROLLOUT_RATIO: our engine over transformers' ``generate`` (``num_return_sequences=n``, held to the full
length with ``min_new_tokens``) on the same prompts (goal >= 3).

    python bench/rollout.py [--prompts 16 --samples 4 --max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def worker(args) -> None:
    import torch.distributed as dist

    from megatron_vopd.architecture import architecture
    from megatron_vopd.config import ParallelConfig, RolloutConfig, load_model_config
    from megatron_vopd.data.tokenizer import load_tokenizer
    from megatron_vopd.rollout.engine import SamplingSpec
    from megatron_vopd.rollout.factory import start_engine
    from megatron_vopd.rollout.layout import generate_split, request_seed
    from megatron_vopd.rollout.probe import probe_prompts
    from megatron_vopd.runtime import init_distributed

    if args.one_share:  # one rank's share of the cores: the half _cpu_slice gives rank 0 of 2
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cores[:max(1, len(cores) // 2)])
    cfg = load_model_config("tiny-qwen2.5-vl")
    cfg.transformer_impl = "local"
    init_distributed(1, 1)
    arch = architecture(cfg.arch)
    model = arch.build_model(cfg, ParallelConfig())
    folder = Path(args.workdir) / f"engines{dist.get_world_size()}"
    engine, layout = start_engine(model, cfg, RolloutConfig(dtype="float32", max_model_len=1024,
                                                            cpu_kvcache_space_gib=1), folder)
    base = probe_prompts(cfg, load_tokenizer(arch.tokenizer))
    prompts = [base[i % len(base)] for i in range(args.prompts)]
    requests = [replace(p[0], seed=request_seed(0, 0, i, args.samples)) for i, p in enumerate(prompts)]
    spec = SamplingSpec(n=args.samples, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens)
    generate_split(engine, layout, requests[:layout.n_engines], SamplingSpec(max_tokens=2), weight_version=0)  # warm-up
    dist.barrier()
    t0 = time.perf_counter()
    out = generate_split(engine, layout, requests, spec, weight_version=0)
    seconds = time.perf_counter() - t0
    engine.shutdown()
    result = {"engines": layout.n_engines, "tokens": sum(len(s.token_ids) for per in out for s in per),
              "seconds": seconds}
    if args.vs_transformers and dist.get_rank() == 0:
        hf = arch.hf_model_class().from_pretrained(folder, dtype=torch.float32).eval()
        kwargs = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=args.samples,
                      max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens, pad_token_id=151643)
        hf_tokens, t0 = 0, time.perf_counter()
        with torch.no_grad():
            for _req, pv, grid, expanded in prompts:
                ids = torch.tensor([expanded])
                gen = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv,
                                  image_grid_thw=grid, mm_token_type_ids=(ids == cfg.image_token_id).int(), **kwargs)
                hf_tokens += gen[:, ids.shape[1]:].numel()
        result.update(hf_tokens=hf_tokens, hf_s=time.perf_counter() - t0)
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(result), flush=True)
    dist.barrier()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--vs-transformers", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--one-share", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from megatron_vopd.runtime.torchrun import torchrun

    work = tempfile.mkdtemp(prefix="vopd-bench-rollout-")
    common = ["--worker", "--workdir", work, "--prompts", str(args.prompts), "--samples", str(args.samples),
              "--max-tokens", str(args.max_tokens)]
    runs = {}
    for name, nproc, extra in (("2", 2, []), ("1/2", 1, ["--one-share"]), ("1", 1, ["--vs-transformers"])):
        code, result, out = torchrun(str(Path(__file__).resolve()), nproc, *common, *extra, timeout=1800)
        if code != 0 or result is None:
            sys.exit(f"the run of {nproc} engine(s) ({name}) failed:\n{out[-4000:]}")
        runs[name] = result
        print(f"[bench] {nproc} engine(s) on {'half the' if extra == ['--one-share'] else 'all'} cores: "
              f"{result['tokens']} tokens in {result['seconds']:.2f}s", flush=True)
    tps = {k: r["tokens"] / r["seconds"] for k, r in runs.items()}
    hf_tps = runs["1"]["hf_tokens"] / runs["1"]["hf_s"]
    labels = {"2": "vLLM, 2 engines", "1/2": "vLLM, 1 engine, half", "1": "vLLM, 1 engine, all"}
    print(f"\n{'rollout (cores)':<26}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}")
    for k, label in labels.items():
        print(f"{label:<26}{runs[k]['tokens']:>8}{runs[k]['seconds']:>9.2f}{tps[k]:>10.1f}")
    print(f"{'transformers generate':<26}{runs['1']['hf_tokens']:>8}{runs['1']['hf_s']:>9.2f}{hf_tps:>10.1f}")
    ratios = {"engines_ratio": tps["2"] / tps["1/2"], "same_cores_ratio": tps["2"] / tps["1"],
              "rollout_ratio": tps["1"] / hf_tps}
    for k, v in ratios.items():
        print(f"{k.upper()} {v:.2f}")
    print("RESULT " + json.dumps({"runs": runs, **ratios}))

if __name__ == "__main__":
    main()
