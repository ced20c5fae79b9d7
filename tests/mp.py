"""Run a torchrun worker from a test and read back the JSON line it prints after "RESULT "."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKERS = ROOT / "tests" / "workers"


def torchrun(worker: str, nproc: int, *args: str, timeout: int = 600) -> tuple[int, dict | None, str]:
    """(exit code, parsed RESULT of rank 0 or None, combined output)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--standalone", str(WORKERS / worker), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines() if "RESULT " in line]
    return proc.returncode, (results[-1] if results else None), out
