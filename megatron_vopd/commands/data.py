"""The ``vopd data`` subcommands (argparse). ``register(subparsers)`` adds them to the ``vopd`` parser.

    vopd data prepare --src DIR --out FILE.parquet [--strict] [--rejects FILE] [--workers N] ...
    vopd data synth --out DIR --n N --seed S [--size 448] ...

Handlers return an exit code: 0 success (prepare: also when rows were rejected; they are listed in the
rejects file and the summary), 1 when the run failed (a bad row under ``--strict``, no valid row: then
nothing is written), 2 bad usage or input found before any row was read (no such ``--src``, ``--n 0``).
"""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_prepare(args) -> int:
    from megatron_vopd.data.errors import DataError
    from megatron_vopd.data.prepare import prepare

    try:
        summary = prepare(args.src, args.out, jsonl=args.jsonl, strict=args.strict, rejects=args.rejects,
                          source=args.source, check_images=args.check_images, workers=args.workers,
                          progress_every=args.progress_every)
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        print("stopped at the first bad row (--strict); nothing was written", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.format())
    if summary.rows_written == 0:
        print("error: no valid row", file=sys.stderr)
        return 1
    return 0


def _cmd_synth(args) -> int:
    from megatron_vopd.data.synth import synthesize

    if args.n < 1 or args.size < 32:
        print(f"error: need --n >= 1 and --size >= 32 (got --n {args.n}, --size {args.size})", file=sys.stderr)
        return 2
    path = synthesize(args.out, args.n, args.seed, size=args.size, crop_margin=args.crop_margin,
                      min_crop_size=args.min_crop_size, num_distractors=args.distractors,
                      answer_format=args.answer_format, jsonl_name=args.jsonl_name, start=args.start, log=print)
    print(f"wrote {args.n} synthetic scenes ({args.size}x{args.size}, seed {args.seed}) to {path}")
    print(f"next: vopd data prepare --src {args.out} --out {os.path.join(args.out, 'train.parquet')}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` (with ``prepare`` and ``synth``) to a ``parser.add_subparsers()`` object."""
    data = subparsers.add_parser("data", help="prepare Vision-OPD-6K as parquet; write synthetic scenes",
                                 description="Data tools: raw Vision-OPD-6K layout -> validated parquet; "
                                             "synthetic fine-grained scenes in the same layout.")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda args: (data.print_help(sys.stderr), 2)[1])  # no subcommand: usage error

    p = sub.add_parser("prepare", help="validate a raw Vision-OPD-6K directory and write one parquet file")
    p.add_argument("--src", required=True, help="dataset directory (train.jsonl, images/, teacher_images/, ...)")
    p.add_argument("--out", required=True, help="output parquet file")
    p.add_argument("--jsonl", default="train.jsonl", help="jsonl file inside --src (default: train.jsonl)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row (default: reject it and go on)")
    p.add_argument("--rejects", default=None, help="rejects file (default: next to --out, named <stem>.rejects.jsonl)")
    p.add_argument("--source", default="vision-opd-6k", help="source name for rows without data_source")
    p.add_argument("--check-images", choices=("decode", "header"), default="decode",
                   help="decode every image (finds truncated files; default) or read headers only (fast)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes checking images")
    p.add_argument("--progress-every", type=int, default=500, help="print a progress line every N rows (0: never)")
    p.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("synth", help="write synthetic fine-grained scenes in the raw Vision-OPD-6K layout")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--n", type=int, required=True, help="number of scenes (a multiple of 4 balances answers exactly)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    s.add_argument("--size", type=int, default=448, help="image side in pixels (default 448)")
    s.add_argument("--crop-margin", type=float, default=0.5, help="crop context around the box, fraction of its side")
    s.add_argument("--min-crop-size", type=int, default=None, help="minimum crop side in pixels (default: size/4)")
    s.add_argument("--distractors", type=int, default=24, help="distractor objects outside the box (default 24)")
    s.add_argument("--answer-format", choices=("letter", "sentence", "color"), default="letter",
                   help="letter: Vision-OPD-6K's instruction; sentence: name the colour, then the letter; "
                        "color: name the colour only (the demo's format)")
    s.add_argument("--jsonl-name", default="train.jsonl", help="jsonl file to write inside --out (default train.jsonl)")
    s.add_argument("--start", type=int, default=0,
                   help="index of the first scene: another --start and --jsonl-name give a disjoint split")
    s.set_defaults(func=_cmd_synth)
    return data
