"""``vopd convert``: HF <-> Megatron checkpoints. With TP x PP > 1 outside torchrun, it relaunches
itself under ``torchrun --standalone`` on this machine (on a cluster, launch it with torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys

from megatron_vopd.models.conversion import (ConversionError, hf_to_megatron, megatron_to_hf, preflight_hf_to_megatron,
                                          preflight_megatron_to_hf)
from megatron_vopd.bridge.hf_config import HFConfigError
from megatron_vopd.bridge.megatron_ckpt import CheckpointExistsError
from megatron_vopd.architecture import UnknownArchitecture
from megatron_vopd.config import ConfigError

USER_ERRORS = (ConversionError, ConfigError, CheckpointExistsError, UnknownArchitecture, HFConfigError,
               FileNotFoundError, KeyError)


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert checkpoints between Hugging Face and Megatron formats")
    conv = p.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
    a = conv.add_parser("hf-to-megatron", help="HF folder -> Megatron distributed checkpoint (loads at any TP/PP)")
    a.add_argument("--hf", required=True, help="Hugging Face checkpoint folder (config.json + safetensors)")
    b = conv.add_parser("megatron-to-hf", help="Megatron checkpoint -> HF folder (transformers and vLLM load it)")
    b.add_argument("--ckpt", required=True,
                   help="Megatron checkpoint folder written by vopd, or a training run (its latest checkpoint)")
    b.add_argument("--weights", choices=("student", "teacher"), default="student",
                   help="student: the trained model (default); teacher: a training checkpoint's EMA/fixed teacher copy")
    b.add_argument("--shard-size-gb", type=float, default=2.0, help="max size of one safetensors shard")
    for q in (a, b):
        q.add_argument("--out", required=True, help="output folder (refused if it holds files, unless --overwrite)")
        q.add_argument("--tp", type=int, default=1, help="tensor-parallel size to convert with")
        q.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to convert with")
        q.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
        q.set_defaults(func=run)


def add_processor_files(out) -> None:
    """A checkpoint that never had tokenizer/processor files (a random model) gets them built offline."""
    import torch.distributed as dist

    from megatron_vopd.architecture import architecture
    from megatron_vopd.bridge.hf_config import read_hf_config

    if (dist.is_initialized() and dist.get_rank() != 0) or (out / "tokenizer_config.json").is_file():
        return
    family = architecture(read_hf_config(out).arch)
    family.save_processor(out)
    print(f"[convert] the checkpoint had no tokenizer/processor files: wrote the {family.tokenizer} ones", flush=True)


def run(args) -> int:
    world = args.tp * args.pp
    try:  # the checks that need no processes, before starting any
        if args.direction == "hf-to-megatron":
            preflight_hf_to_megatron(args.hf, args.out, args.tp, args.pp, args.overwrite)
        else:
            preflight_megatron_to_hf(args.ckpt, args.out, args.tp, args.pp, args.overwrite)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if world > 1 and "RANK" not in os.environ:
        from megatron_vopd.runtime.torchrun import threads_per_process, torchrun_command

        cmd = torchrun_command(world, "megatron_vopd.cli", *args.argv)
        print(f"[convert] launching {world} processes: torchrun --nproc-per-node {world} ...", flush=True)
        # OMP_NUM_THREADS set: torchrun's banner about setting it has nothing for the user to do
        return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": threads_per_process(world)})
    from megatron_vopd.runtime import destroy_distributed

    try:
        if args.direction == "hf-to-megatron":
            hf_to_megatron(args.hf, args.out, args.tp, args.pp, args.overwrite)
        else:
            out = megatron_to_hf(args.ckpt, args.out, args.tp, args.pp, args.overwrite, int(args.shard_size_gb * 1024**3),
                                 weights=args.weights)
            add_processor_files(out)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        destroy_distributed()
    return 0
