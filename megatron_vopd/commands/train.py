"""``vopd train RECIPE [key.sub=value ...] [--nproc N]``: train on this machine under torchrun.

The recipe is validated here first (errors name the key), and its files are checked (the data files
exist; ``checkpoint.load`` holds the recipe's model: ``train/preflight.py``), then the process becomes
``torchrun --standalone --nproc-per-node N -m megatron_vopd.train.trainer RECIPE ...`` (exec, so
Ctrl-C and SIGTERM reach the workers). N defaults to TP x PP (one data-parallel replica). On a
cluster the same trainer module runs under the launcher's torchrun (launch/, docker/).
"""

from __future__ import annotations

import os
import sys


def register(sub) -> None:
    p = sub.add_parser("train", help="train a recipe on this machine (torchrun, N local processes)")
    p.add_argument("recipe", help="YAML recipe (e.g. configs/demo.yaml) or a scale-out recipe's name (e.g. qwen3.5-4b, "
                                  "as vopd plan --recipe takes it)")
    p.add_argument("overrides", nargs="*", help="key.sub=value, e.g. optimizer.train_steps=10")
    p.add_argument("--nproc", type=int, default=None, help="processes (default: TP x PP)")
    p.add_argument("--dry-run", "--dryrun", dest="dry_run", action="store_true",
                   help="validate, print the torchrun command and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from megatron_vopd.config import ConfigError, load_config, resolve_recipe, validate
    from megatron_vopd.runtime.torchrun import threads_per_process, torchrun_command
    from megatron_vopd.train.preflight import preflight

    try:
        recipe = str(resolve_recipe(args.recipe))
        cfg = load_config(recipe, args.overrides)
        p = cfg.parallel
        nproc = args.nproc or p.tensor_model_parallel_size * p.pipeline_model_parallel_size
        cmd = torchrun_command(nproc, "megatron_vopd.train.trainer", recipe, *args.overrides)
        validate(cfg, world_size=nproc)
        problems = preflight(cfg)
        if problems:
            raise ConfigError("the run cannot start:\n  " + "\n  ".join(problems))
    except (ConfigError, FileNotFoundError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(" ".join(cmd), flush=True)
    if args.dry_run:
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": threads_per_process(nproc)}
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
