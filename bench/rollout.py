"""Benchmark: rollout tokens/s of our vLLM engine / transformers' generate, same prompts, same sampling.

The tiny Qwen2.5-VL (random weights), image+text prompts, ``--prompts`` x ``--n`` samples of exactly
up to ``--max-tokens`` tokens each, temperature 1.0, top_p 1.0; tokens/s counts the tokens each
actually generated (random weights make an early EOS very rare; transformers is held to the full
length with ``min_new_tokens``). vLLM: one ``generate`` call on the engine (continuous batching);
transformers: ``generate`` with ``num_return_sequences=n`` per prompt (its usual use). Engine
start-up is excluded from both. Goal >= 3.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    from megatron_vopd.architecture import architecture
    from megatron_vopd.config import ParallelConfig, RolloutConfig, load_model_config
    from megatron_vopd.data.tokenizer import load_tokenizer
    from megatron_vopd.rollout.engine import SamplingSpec
    from megatron_vopd.rollout.factory import start_engine
    from megatron_vopd.rollout.probe import probe_prompts
    from megatron_vopd.runtime import init_distributed

    cfg = load_model_config("tiny-qwen2.5-vl")
    cfg.transformer_impl = "local"
    init_distributed(1, 1)
    arch = architecture(cfg.arch)
    model = arch.build_model(cfg, ParallelConfig())
    folder = Path(tempfile.mkdtemp(prefix="vopd-bench-rollout-")) / "model"
    engine = start_engine(model, cfg, RolloutConfig(dtype="float32", max_model_len=1024, cpu_kvcache_space_gib=1), folder)
    base = probe_prompts(cfg, load_tokenizer(arch.tokenizer))
    prompts = [base[i % len(base)] for i in range(args.prompts)]
    total = args.prompts * args.n * args.max_tokens

    spec = SamplingSpec(n=args.n, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, seed=0)
    engine.generate([p[0] for p in prompts[:1]], SamplingSpec(max_tokens=2), weight_version=0)  # warm-up
    t0 = time.perf_counter()
    out = engine.generate([p[0] for p in prompts], spec, weight_version=0)
    vllm_s = time.perf_counter() - t0
    engine.shutdown()
    vllm_tokens = sum(len(s.token_ids) for per in out for s in per)

    hf = arch.hf_model_class().from_pretrained(folder, dtype=torch.float32).eval()
    kwargs = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=args.n,
                  max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens, pad_token_id=151643)
    hf_tokens, t0 = 0, time.perf_counter()
    with torch.no_grad():
        for _req, pv, grid, expanded in prompts:
            ids = torch.tensor([expanded])
            gen = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv, image_grid_thw=grid,
                              mm_token_type_ids=(ids == cfg.image_token_id).int(), **kwargs)
            hf_tokens += gen[:, ids.shape[1]:].numel()
    hf_s = time.perf_counter() - t0
    ratio = (vllm_tokens / vllm_s) / (hf_tokens / hf_s)
    print(f"\n{'engine':<14}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}")
    print(f"{'vLLM (ours)':<14}{vllm_tokens:>8}{vllm_s:>9.2f}{vllm_tokens / vllm_s:>10.1f}")
    print(f"{'transformers':<14}{hf_tokens:>8}{hf_s:>9.2f}{hf_tokens / hf_s:>10.1f}")
    print(f"ROLLOUT_RATIO {ratio:.2f}")
    print("RESULT " + json.dumps({"requested_tokens": total, "vllm_tokens": vllm_tokens, "vllm_s": vllm_s,
                                  "hf_tokens": hf_tokens, "hf_s": hf_s, "ratio": ratio}))


if __name__ == "__main__":
    main()
