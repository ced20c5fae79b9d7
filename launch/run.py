"""Launch a Vision-OPD run through NeMo-Run (in the launcher env, .venv-launcher).

    python -m launch.run --recipe demo --executor local                      # the tiny demo, 2 CPU processes
    python -m launch.run --recipe qwen2.5-vl-7b --executor slurm --nodes 1 --gpus-per-node 8 \\
        --image megatron-vopd:0.1.0-gpu --account ACC --partition batch \\
        --mount /lustre/data:/data data.train_file=/data/train.parquet --dry-run

Builds one NeMo-Run experiment whose tasks are the recipe's stages (launch/recipes.py), run one after
another; ``key=value`` arguments override the training recipe. Every trainer stage's config is
loaded and validated for nodes x gpus-per-node processes before anything starts or is submitted.
``--dry-run`` prints what would run (the sbatch script, the docker container spec, the local
command) and starts nothing. Exit status: 0 when every stage succeeded, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from megatron_vopd.config import ConfigError

from launch.executors import LaunchError, LaunchOptions, executor, script
from launch.recipes import (DEMO_EVAL_SCENES, DEMO_TRAIN_SCENES, RECIPES, REPO, check_stage_configs, cluster_problems,
                            get_recipe, stages)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m launch.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="recipes:\n" + "\n".join(f"  {r.name:<16}{r.description}" for r in RECIPES.values()))
    p.add_argument("--recipe", required=True, help="a launch recipe (listed below)")
    p.add_argument("--executor", required=True, choices=("local", "slurm", "docker"))
    p.add_argument("--nodes", type=int, default=None, help="nodes (default: the recipe's)")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="GPUs per node = training processes per node (CPU processes for local; default: the recipe's)")
    p.add_argument("--image", default="", help="container image (slurm, docker): see docker/ and the README")
    p.add_argument("--mount", action="append", default=[], metavar="SRC:DST", help="container mount (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable (repeatable)")
    p.add_argument("--account", default="", help="slurm account")
    p.add_argument("--partition", default="", help="slurm partition")
    p.add_argument("--time", default="04:00:00", help="slurm time limit (default 04:00:00)")
    p.add_argument("--job-dir", default="", help="slurm: job files folder on the cluster (default ~/.vopd/slurm-jobs)")
    p.add_argument("--ssh-host", default="", help="slurm: submit through ssh to this login node (default: sbatch here)")
    p.add_argument("--ssh-user", default="", help="slurm: ssh user (default $USER)")
    p.add_argument("--runtime-venv", default=".venv", help="local: the runtime environment (default .venv)")
    p.add_argument("--out", default="outputs/launch-demo", help="demo: output folder (default outputs/launch-demo)")
    p.add_argument("--scenes", type=int, default=DEMO_TRAIN_SCENES,
                   help=f"demo: synthetic training scenes (default {DEMO_TRAIN_SCENES})")
    p.add_argument("--eval-scenes", type=int, default=DEMO_EVAL_SCENES,
                   help=f"demo: held-out scenes evaluated before and after (default {DEMO_EVAL_SCENES})")
    p.add_argument("--dry-run", "--dryrun", dest="dryrun", action="store_true",
                   help="print what would run; start nothing (the same option as vopd train --dry-run)")
    p.add_argument("--warn-only", action="store_true",
                   help="slurm/docker: only warn about relative paths and a null checkpoint.load (default: refuse)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training recipe overrides")
    return p.parse_args(argv)


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LaunchError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def build(args: argparse.Namespace):
    """(experiment title, [(stage, script, executor)]) for the parsed arguments; raises on bad input."""
    recipe = get_recipe(args.recipe)
    opts = LaunchOptions(executor=args.executor, nodes=args.nodes or recipe.nodes,
                         gpus_per_node=args.gpus_per_node or recipe.gpus_per_node, image=args.image,
                         mounts=args.mount, env=_env(args.env), account=args.account, partition=args.partition,
                         time=args.time, job_dir=args.job_dir, ssh_host=args.ssh_host, ssh_user=args.ssh_user,
                         runtime_venv=args.runtime_venv)
    opts.check()
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise LaunchError(f"overrides must be key=value, got {bad}")
    if args.scenes < 1 or args.eval_scenes < 1:
        raise LaunchError(f"--scenes {args.scenes} and --eval-scenes {args.eval_scenes} must be >= 1")
    run_stages = stages(recipe, list(args.overrides), args.out, opts.gpus_per_node, args.scenes, args.eval_scenes)
    # The container carries Transformer Engine; on this host it is detected.
    check_stage_configs(run_stages, opts.nodes * opts.gpus_per_node,
                        te_available=True if args.executor != "local" else None)
    if args.executor != "local":
        problems = cluster_problems(run_stages)
        if problems and not args.warn_only:
            raise LaunchError("refusing to submit (--warn-only submits anyway):\n  " + "\n  ".join(problems))
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
    return f"vopd-{recipe.name}", [(s, script(s), executor(opts, s)) for s in run_stages]


def render(request) -> str:
    """What a dry-run would execute: the sbatch script, the docker container spec, the local command."""
    if hasattr(request, "materialize"):  # slurm: the sbatch script
        return request.materialize()
    if hasattr(request, "role_params"):  # local: torchx's Popen request
        lines = []
        for params in request.role_params.values():
            for p in params:
                env = " ".join(f"{k}={v}" for k, v in sorted(p.env.items()) if not k.startswith(("TORCHELASTIC", "PET_")))
                lines += [f"cwd: {p.cwd}", f"env: {env}", "command: " + " ".join(p.args)]
        return "\n".join(lines)
    # NeMo-Run creates its network before it starts the container; a command run by hand needs it too
    network = {c.executor.network for c in request.containers} - {"host", "bridge", "none", None}
    return "\n".join([*(f"docker network create {n}  # NeMo-Run does this itself" for n in sorted(network)),
                      *(_docker_run(c) for c in request.containers)])


def _docker_run(container) -> str:
    """The ``docker run`` equivalent of what NeMo-Run passes to the Docker SDK for one container."""
    ex = container.executor
    parts = ["docker run --rm", f"--name {container.name}", f"--runtime {ex.runtime}" if ex.runtime else "",
             f"--gpus {ex.num_gpus}" if ex.num_gpus else "", f"--ipc {ex.ipc_mode}" if ex.ipc_mode else "",
             f"--shm-size {ex.shm_size}" if ex.shm_size else "", *(f"--ulimit {u.replace(':', '=', 1)}" for u in ex.ulimits),
             f"--network {ex.network}", *(f"-v {v}" for v in ex.volumes),
             f"-v {ex.job_dir}:/nemo_run",  # the job folder (code, logs), added by NeMo-Run's docker scheduler
             *(f"-e {k}={v}" for k, v in (ex.env_vars | container.extra_env).items()),
             "-w /nemo_run/code", ex.container_image, " ".join(container.command)]
    return " \\\n  ".join(p for p in parts if p)


def _dryrun(title: str, tasks, args) -> int:
    import nemo_run as run

    with run.Experiment(title, log_level="WARN") as exp:
        for stage, task, ex in tasks:
            exp.add(task, executor=ex, name=stage.name, tail_logs=False)
        exp.dryrun(log=False)
        for job in exp.jobs:
            print(f"===== stage {job.id} ({args.executor})")
            print(render(job._dryrun_info.request))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        title, tasks = build(args)
    except (LaunchError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import nemo_run as run

    os.chdir(REPO)  # local tasks run from the repository root (configs/ paths)
    if args.dryrun:  # NeMo-Run records even a dry run's experiment: keep it out of ~/.nemo_run
        home = tempfile.mkdtemp(prefix="vopd-dryrun-")
        run.config.set_nemorun_home(home)
        try:
            return _dryrun(title, tasks, args)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    with run.Experiment(title, log_level="WARN") as exp:
        for stage, task, ex in tasks:
            exp.add(task, executor=ex, name=stage.name, tail_logs=True)
        exp.run(sequential=True)
    # leaving the context waits for every task; a task that failed stops the ones after it
    states = {job.id: str(job.state) for job in exp.jobs}
    print("[launch] " + ", ".join(f"{name}: {state}" for name, state in states.items()))
    return 0 if all(s.endswith("SUCCEEDED") for s in states.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
