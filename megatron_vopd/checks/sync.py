"""Rollout check: after a weight sync from Megatron at any TP/PP, vLLM samples with the Megatron
model's probabilities; stale weights are refused; a sync changes the output.

A torchrun worker; every rank hosts an engine (engine TP 1), the probe prompts are split over the
engines (``rollout.layout``), so with ``--tp 1`` on 2 processes (DP2) two engines sample and are synced:

    torchrun --nproc-per-node 2 -m megatron_vopd.checks.sync --tp 2 --workdir /tmp/x [--greedy-vs-transformers]
        [--model tiny-qwen3.5 --dtype bfloat16]

``--dtype`` is the dtype of the Megatron parameters, of the synced weights and of vLLM's engine (and of
transformers for the greedy comparison). Prints ``RESULT {...}`` on rank 0 with the max and mean
|logprob difference| over all sampled tokens, the weight version every engine reports and the stale-weights
error each engine raised.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

def megatron_logprobs(model, cfg, prompt_ids, response, pixel_values, grid) -> list[float]:
    """Teacher-forced log-probs of ``response`` after ``prompt_ids`` (collective; all ranks get them)."""
    from megatron_vopd.architecture import architecture
    from megatron_vopd.checks.common import forward_logits

    ids = torch.tensor([prompt_ids + response])
    batch = dict(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid,
                 position_ids=architecture(cfg.arch).position_ids(cfg, ids, grid))
    start = len(prompt_ids) - 1

    def response_logprobs(logits):
        logp = torch.log_softmax(logits.float(), dim=-1)[0, start:start + len(response)]
        return logp.gather(-1, torch.tensor(response)[:, None])[:, 0].tolist()

    return forward_logits(model, batch, response_logprobs)


@torch.no_grad()
def perturb(model, seed: int, scale: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale)


def main(argv=None) -> int:
    from megatron_vopd.architecture import architecture
    from megatron_vopd.bridge.export import save_hf_weights
    from megatron_vopd.bridge.table import MappingTable
    from megatron_vopd.config import ParallelConfig, RolloutConfig, load_model_config
    from megatron_vopd.data.tokenizer import load_tokenizer
    from megatron_vopd.rollout.engine import SamplingSpec, StaleWeightsError
    from megatron_vopd.rollout.factory import start_engine
    from megatron_vopd.rollout.layout import generate_split, per_engine
    from megatron_vopd.rollout.probe import probe_prompts
    from megatron_vopd.rollout.weight_sync import sync_weights
    from megatron_vopd.runtime import init_distributed

    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--greedy-vs-transformers", action="store_true")
    ap.add_argument("--bucket-bytes", type=int, default=8 * 1024**2)
    ap.add_argument("--model", default="tiny-qwen2.5-vl", help="model recipe (configs/model/*.yaml)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--sleep", type=int, default=0, choices=[0, 1, 2],
                    help="CUDA: put the engines to sleep at this level before the second sync (rollout.sleep)")
    args = ap.parse_args(argv)

    cfg = load_model_config(args.model)
    cfg.transformer_impl = "local"
    cfg.params_dtype = args.dtype
    info = init_distributed(args.tp, args.pp, seed=7, timeout_s=1800)
    arch = architecture(cfg.arch)
    model = arch.build_model(cfg, ParallelConfig(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp))
    model.eval()
    work = Path(args.workdir)
    rank0 = info.rank == 0
    # The engine starts from the policy's current weights on disk (vLLM's dummy start leaves its
    # vision tower wrong even after a reload), then follows the policy by syncs.
    engine, layout = start_engine(model, cfg, RolloutConfig(dtype=args.dtype, max_model_len=1024, sleep=args.sleep,
                                                            cpu_kvcache_space_gib=1), work / "engine")
    split = lambda reqs, spec, v: generate_split(engine, layout, reqs, spec, weight_version=v)  # noqa: E731
    sync = lambda v: sync_weights(engine, model, cfg, version=v, bucket_bytes=args.bucket_bytes, dtype=args.dtype)  # noqa: E731
    perturb(model, seed=5)
    stats = sync(1)
    prompts = probe_prompts(cfg, load_tokenizer(arch.tokenizer))
    requests = [p[0] for p in prompts]
    for i, r in enumerate(requests):
        r.seed = 3 + 2 * i
    result = {"tp": args.tp, "pp": args.pp, "sync": stats, "engines": layout.n_engines}

    samples = split(requests, SamplingSpec(n=2, temperature=1.0, max_tokens=8), 1)
    greedy = split(requests, SamplingSpec(n=1, temperature=0.0, max_tokens=8), 1)
    diffs = []
    for (req, pv, grid, expanded), per_prompt in zip(prompts, samples):
        for s in per_prompt:
            ours = megatron_logprobs(model, cfg, expanded, s.token_ids, pv, grid)
            diffs += [abs(a - b) for a, b in zip(ours, s.logprobs)]
    result["sampled_tokens"] = len(diffs)
    result["logprob_max_abs_diff"] = max(diffs)
    result["logprob_mean_abs_diff"] = sum(diffs) / len(diffs)

    # Change the weights; without a sync the engine refuses; after one its output changes.
    perturb(model, seed=11)
    try:
        engine.generate(requests, SamplingSpec(max_tokens=4), weight_version=2)
        stale = None
    except StaleWeightsError as e:
        stale = str(e)
    result["stale_errors"] = per_engine(layout, stale)
    result["stale_error"] = result["stale_errors"][0]
    if args.sleep and torch.cuda.is_available():  # the training phase: the engine's GPU memory comes back
        free = torch.cuda.mem_get_info()[0]
        engine.sleep()
        result["sleep_freed_gib"] = (torch.cuda.mem_get_info()[0] - free) / 2**30
        engine.wake_up(["weights"])
    sync(2)
    engine.wake_up(["kv_cache"])
    result["engine_versions"] = per_engine(layout, engine.weight_version)
    after = split(requests, SamplingSpec(n=1, temperature=0.0, max_tokens=8), 2)
    result["greedy_before"] = [r[0].token_ids for r in greedy]
    result["greedy_after"] = [r[0].token_ids for r in after]

    if args.greedy_vs_transformers:
        save_hf_weights(model, MappingTable.for_config(cfg), cfg, work / "exported")
        if rank0:
            theirs, logits = transformers_greedy(arch, work / "exported", prompts, max_new_tokens=8,
                                                 dtype=getattr(torch, args.dtype))
            result["greedy_transformers"] = theirs
            result["greedy_vs_transformers"] = compare_greedy(result["greedy_after"], theirs, logits)
    engine.shutdown()
    if rank0:
        print("RESULT " + json.dumps(result), flush=True)
    dist.barrier()
    return 0


def transformers_greedy(arch, hf_dir, prompts, max_new_tokens: int, dtype=torch.float32):
    """Transformers' greedy tokens per prompt on the exported folder, with each step's logits (fp32)."""
    from megatron_vopd.data.tokenizer import load_tokenizer

    tok = load_tokenizer(arch.tokenizer)
    stop = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    model = arch.hf_model_class().from_pretrained(hf_dir, dtype=dtype).eval()
    tokens, scores = [], []
    for _req, pv, grid, expanded in prompts:
        ids = torch.tensor([expanded])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv.to(dtype),
                             image_grid_thw=grid, mm_token_type_ids=(ids == model.config.image_token_id).int(),
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=stop[1],
                             output_logits=True, return_dict_in_generate=True)
        tokens.append(gen.sequences[0, ids.shape[1]:].tolist())
        scores.append([step[0].float() for step in gen.logits])
    return tokens, scores


def compare_greedy(ours: list[list[int]], theirs: list[list[int]], their_logits) -> dict:
    """Equal tokens up to the first divergence of each prompt; at a divergence, how far transformers'
    own logit for the engine's token is below its choice (a bf16 near-tie is a margin of a few ulps)."""
    from megatron_vopd.runtime.dtypes import bf16_ulp

    equal, compared, margins = 0, 0, []
    for a, b, logits in zip(ours, theirs, their_logits):
        for i, (x, y) in enumerate(zip(a, b)):
            compared += 1
            if x != y:
                margins.append({"step": i, "margin": float(logits[i][y] - logits[i][x]),
                                "bf16_ulp": float(bf16_ulp(logits[i][y]))})
                break
            equal += 1
        else:
            if len(a) != len(b):
                margins.append({"step": min(len(a), len(b)), "margin": float("inf"), "bf16_ulp": 0.0})
    return {"equal_tokens": equal, "compared_tokens": compared, "divergence_margins": margins}


if __name__ == "__main__":
    sys.exit(main())
