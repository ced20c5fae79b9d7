"""Start a module under torchrun on this machine and read back the JSON line it prints after "RESULT "."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def torchrun(target: str, nproc: int, *args: str, timeout: int = 600) -> tuple[int, dict | None, str]:
    """Run ``target`` (a module name like ``megatron_vopd.models.layout_check`` or a script path) on
    ``nproc`` local processes. Returns (exit code, the last RESULT of rank 0 or None, all output)."""
    entry = ["-m", target] if not target.endswith(".py") else [target]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *entry, *args]
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # no oversubscription
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines() if "RESULT " in line]
    return proc.returncode, (results[-1] if results else None), out
