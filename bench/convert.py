"""Benchmark: HF <-> Megatron conversion of a ~0.5B-parameter-shaped Qwen2.5-VL, in bf16.

Prints, for each direction:
* peak resident memory of the conversion / checkpoint size. "Conversion memory" is the peak RSS of
  the converting process minus its RSS after imports and process-group start-up (torch, megatron-core
  and transformers alone take ~0.6 GB before any weight is touched); the total is printed too.
  Goal <= 1.5.
* conversion time / the time to just read and write the same bytes (Python file reads of every
  safetensors/distcp byte into memory and writes of them to a new file, same disk, same run).

The model: configs/model/bench-0.5b-qwen2.5-vl.yaml (Qwen2.5-0.5B's decoder shape with a 2-block
vision tower); weights are random bf16 written straight to safetensors (no transformers model is built). ``--quick`` shrinks it for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CHILD = r"""
import json, resource, sys, time, psutil, torch
import megatron.core, transformers
from megatron_vopd.runtime import init_distributed
from megatron_vopd.models import conversion as convert
init_distributed(1, 1)
base = psutil.Process().memory_info().rss
t0 = time.perf_counter()
direction, src, out = sys.argv[1:4]
if direction == "hf-to-megatron":
    convert.hf_to_megatron(src, out)
else:
    convert.megatron_to_hf(src, out)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({"seconds": seconds, "base_rss": base, "peak_rss": peak}), flush=True)
"""


def model_config(quick: bool):
    from megatron_vopd.config import load_model_config

    return load_model_config("tiny-qwen2.5-vl" if quick else "bench-0.5b-qwen2.5-vl")


def write_random_hf(cfg, out: Path) -> int:
    from megatron_vopd.architecture import architecture
    from megatron_vopd.bridge import MappingTable
    from megatron_vopd.bridge.hf_config import hf_config
    from megatron_vopd.bridge.hf_io import ShardedSafetensorsWriter

    with torch.device("meta"):
        meta = architecture(cfg.arch).hf_model_class()(hf_config(cfg))
    shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    shapes = {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): s for k, s in shapes.items()}
    needed = MappingTable.for_config(cfg).hf_names()
    writer = ShardedSafetensorsWriter(out, shard_bytes=512 * 1024**2)
    g = torch.Generator().manual_seed(0)
    for name in sorted(needed):
        writer.add(name, (torch.randn(shapes[name], generator=g) * 0.02).to(torch.bfloat16))
    writer.close()
    hf_config(cfg).save_pretrained(out)
    return writer.total_bytes


def read_write_seconds(src: Path, dst: Path) -> float:
    """Read every file under src fully into memory (64 MiB at a time) and write it to dst."""
    dst.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        with open(f, "rb") as r, open(dst / f.name, "wb") as w:
            while chunk := r.read(64 << 20):
                w.write(chunk)
    return time.perf_counter() - t0


def run_child(direction: str, src: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", CHILD, direction, str(src), str(out)], capture_output=True,
                          text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{direction} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model: a smoke test of the benchmark itself")
    ap.add_argument("--workdir", help="where to write checkpoints (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vopd-bench-convert-"))
    cfg = model_config(args.quick)
    hf, mg, back = work / "hf", work / "megatron", work / "hf_back"
    for p in (hf, mg, back, work / "copy1", work / "copy2"):
        shutil.rmtree(p, ignore_errors=True)
    print(f"[bench] writing a random {cfg.num_layers}-layer, hidden-{cfg.hidden_size} Qwen2.5-VL ({cfg.params_dtype}) to {hf}", flush=True)
    size = write_random_hf(cfg, hf)
    print(f"[bench] checkpoint: {size / 1e9:.3f} GB of tensors", flush=True)
    rows = []
    for direction, src, out in (("hf-to-megatron", hf, mg), ("megatron-to-hf", mg, back)):
        print(f"[bench] {direction} ...", flush=True)
        r = run_child(direction, src, out)
        io = read_write_seconds(src, work / f"copy{len(rows) + 1}")
        rows.append((direction, r, io))
    print(f"\n{'direction':<16} {'conv s':>7} {'rd+wr s':>8} {'time ratio':>10} {'peak-base GB':>12} {'peak GB':>8} {'mem ratio':>9}")
    result = {"checkpoint_bytes": size}
    for direction, r, io in rows:
        mem = (r["peak_rss"] - r["base_rss"]) / size
        print(f"{direction:<16} {r['seconds']:>7.2f} {io:>8.2f} {r['seconds'] / io:>10.2f} "
              f"{(r['peak_rss'] - r['base_rss']) / 1e9:>12.3f} {r['peak_rss'] / 1e9:>8.3f} {mem:>9.2f}")
        result[direction] = {**r, "read_write_seconds": io, "time_ratio": r["seconds"] / io, "memory_ratio": mem}
    print("RESULT " + json.dumps(result))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
