"""The ``vopd`` command. Each subcommand lives in its own module; this file only dispatches.

Exit codes, every subcommand: 0 done; 1 the work ran and failed (no valid data row, nothing fits in
``vopd plan``, a failed check); 2 bad usage or input, found before any work started.

    vopd demo                 the demo: crop warm-up, eval, Vision-OPD, eval, on CPU (demo.py)
    vopd config [RECIPE] [key.sub=value ...]   print a recipe resolved with overrides, validated
    vopd data synth|prepare   synthetic fine-grained data; raw Vision-OPD-6K -> parquet (commands/data.py)
    vopd convert hf-to-megatron|megatron-to-hf   checkpoint conversion (commands/convert.py)
    vopd serve --ckpt DIR     serve an exported checkpoint with vLLM's OpenAI server (commands/serve.py)
    vopd plan --recipe NAME --nodes N   per-GPU memory of a scale-out recipe and the layouts that fit
    vopd train RECIPE [key.sub=value ...]   train on this machine under torchrun (commands/train.py)
    vopd eval --ckpt DIR --data FILE --out DIR   full-image vs crop accuracy of checkpoints (commands/eval.py)
"""

from __future__ import annotations

import argparse
import sys


def _cmd_config(args) -> int:
    from megatron_vopd.config import ConfigError, dump_yaml, load_config

    try:
        cfg = load_config(args.recipe, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(dump_yaml(cfg), end="")
    return 0


def _cmd_demo(args) -> int:
    from megatron_vopd.demo import run_demo

    from megatron_vopd.architecture import UnknownArchitecture

    try:
        return run_demo(out=args.out, warmup_steps=args.warmup_steps, opd_steps=args.opd_steps, arch=args.arch)
    except UnknownArchitecture as e:
        print(f"error: --arch: {e}", file=sys.stderr)
        return 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("megatron-vopd")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vopd", description="Vision-OPD on Megatron-Core: on-policy "
                                     "self-distillation of Qwen-VL models (student: full image, teacher: evidence crop).")
    parser.add_argument("--version", action="version", version=f"vopd {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("demo", help="run the CPU demo: crop warm-up, eval, Vision-OPD, eval (tiny Qwen2.5-VL)")
    p.add_argument("--out", default="outputs/demo", help="output directory (replaced)")
    p.add_argument("--warmup-steps", type=int, default=None, help="override the warm-up's optimizer.train_steps")
    p.add_argument("--opd-steps", type=int, default=None, help="override Vision-OPD's optimizer.train_steps")
    p.add_argument("--arch", default=None, help="run it on the tiny model of another registered family "
                   "(e.g. qwen3.5; default: the recipes' tiny Qwen2.5-VL)")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("config", help="print a recipe resolved with key.sub=value overrides, after validation")
    p.add_argument("recipe", nargs="?", help="YAML recipe (e.g. configs/demo.yaml); default: built-in defaults")
    p.add_argument("overrides", nargs="*", help="key.sub=value, e.g. parallel.tensor_model_parallel_size=2")
    p.set_defaults(func=_cmd_config)
    from megatron_vopd.commands.convert import register as register_convert
    from megatron_vopd.commands.data import register as register_data
    from megatron_vopd.commands.eval import register as register_eval
    from megatron_vopd.commands.plan import register as register_plan
    from megatron_vopd.commands.serve import register as register_serve
    from megatron_vopd.commands.train import register as register_train

    register_data(sub)
    register_convert(sub)
    register_serve(sub)
    register_plan(sub)
    register_train(sub)
    register_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "func", None):  # no subcommand: usage error, as argparse's own (exit code 2)
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
