"""Benchmark: weight sync Megatron -> vLLM for a ~0.5B-parameter-shaped Qwen2.5-VL (bf16), in one process world.

Prints the median time of a full sync (export stream from the live Megatron model, bucketing,
shared-memory transfer to the vLLM engine process, vLLM's in-place reload, cache resets) divided by
the median time of one plain memcpy of the same number of bytes in the same run (``torch`` copy of
one flat buffer into another). Goal <= 3. ``--quick`` uses the tiny model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=256)
    args = ap.parse_args()

    from megatron_vopd.architecture import architecture
    from megatron_vopd.config import ParallelConfig, RolloutConfig, load_model_config
    from megatron_vopd.rollout.factory import start_engine
    from megatron_vopd.rollout.weight_sync import sync_weights
    from megatron_vopd.runtime import init_distributed

    cfg = load_model_config("tiny-qwen2.5-vl" if args.quick else "bench-0.5b-qwen2.5-vl")
    cfg.transformer_impl = "local"
    dtype = "float32" if args.quick else "bfloat16"
    init_distributed(1, 1)
    model = architecture(cfg.arch).build_model(cfg, ParallelConfig())
    work = Path(tempfile.mkdtemp(prefix="vopd-bench-sync-"))
    print(f"[bench] exporting the initial weights to {work} and starting the vLLM engine from them ...", flush=True)
    engine, _ = start_engine(model, cfg, RolloutConfig(dtype=dtype, max_model_len=1024, cpu_kvcache_space_gib=1),
                             work / "engine")
    syncs = []
    for i in range(args.repeats + 1):
        stats = sync_weights(engine, model, cfg, version=i + 1, bucket_bytes=args.bucket_mb * 1024**2, dtype=dtype)
        print(f"[bench] sync {i + 1}: {stats['seconds']:.3f} s, {stats['bytes'] / 1e9:.3f} GB"
              + (" (warm-up)" if i == 0 else ""), flush=True)
        if i:
            syncs.append(stats["seconds"])
    engine.shutdown()
    nbytes = stats["bytes"]
    src, dst = torch.empty(nbytes, dtype=torch.uint8).fill_(1), torch.empty(nbytes, dtype=torch.uint8)
    dst.copy_(src)
    copies = []
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        copies.append(time.perf_counter() - t0)
    sync_s, copy_s = statistics.median(syncs), statistics.median(copies)
    print(f"\nbytes synced            {nbytes / 1e9:.3f} GB ({dtype})")
    print(f"sync (median of {len(syncs)})      {sync_s:.3f} s")
    print(f"memcpy (median of 5)    {copy_s:.3f} s")
    print(f"SYNC_MEMCPY_RATIO {sync_s / copy_s:.2f}")
    print("RESULT " + json.dumps({"bytes": nbytes, "sync_s": syncs, "memcpy_s": copies, "ratio": sync_s / copy_s}))


if __name__ == "__main__":
    main()
