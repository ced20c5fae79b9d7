"""torchrun on this machine: the one command line (``torchrun_command``), and a runner that reads back
the JSON line a worker prints after "RESULT " (the checks and the tests use it)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def torchrun_command(nproc: int, target: str, *args: str) -> list[str]:
    """``torchrun --standalone --nproc-per-node N`` of ``target``: a module name like
    ``megatron_vopd.train.trainer`` or a script path (``.py``), with its arguments."""
    entry = ["-m", target] if not target.endswith(".py") else [target]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *entry, *args]


def threads_per_process(nproc: int) -> str:
    """OMP_NUM_THREADS for ``nproc`` local processes: the cores split between them (no oversubscription)."""
    return os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))


def torchrun(target: str, nproc: int, *args: str, timeout: int = 600) -> tuple[int, dict | None, str]:
    """Run ``target`` (a module name like ``megatron_vopd.checks.layouts`` or a script path) on
    ``nproc`` local processes. Returns (exit code, the last RESULT of rank 0 or None, all output)."""
    cmd = torchrun_command(nproc, target, *args)
    env = {**os.environ, "OMP_NUM_THREADS": threads_per_process(nproc), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines() if "RESULT " in line]
    return proc.returncode, (results[-1] if results else None), out
