"""Each CPU shim is needed (its workload fails without it on a CPU-only torch) and works (the same
workload succeeds once it is applied). Each probe runs in its own process: shims are process-wide."""

import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_vopd.runtime import cpu_shims
from tests.mp import ROOT, WORKERS


# what the workload's failure without the shim says
WITHOUT = {"cuda_tensor_type_names": "torch.cuda.BFloat16Tensor", "fused_adam": "KeyError: 'step'",
           "fla_gated_delta_rule": "FLA is not installed"}


@pytest.mark.parametrize("name", cpu_shims.SHIM_NAMES)
def test_shim_is_needed_and_works(name):
    proc = subprocess.run([sys.executable, str(WORKERS / "shim_probe.py"), name], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["error_without"] is not None and WITHOUT.get(name, "CUDA") in result["error_without"], result
    assert result["with"], result


def test_shims_refuse_to_run_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match="must not be applied when CUDA is available"):
        cpu_shims.apply_cpu_shims()


def test_unknown_shim_is_named():
    if torch.cuda.is_available():
        pytest.skip("CPU only")
    with pytest.raises(KeyError, match="no_such_shim"):
        cpu_shims.apply_cpu_shims(["no_such_shim"])
