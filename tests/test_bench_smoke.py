"""The benchmarks run (tiny variants) and print their ratios, so they cannot rot unnoticed."""

import json
import os
import subprocess
import sys

import pytest

from megatron_vopd.runtime.torchrun import ROOT

pytestmark = pytest.mark.slow


def run_bench(script, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_mfu_quick_prints_ratio():
    out = run_bench("mfu.py", "--quick")
    ratio = float(next(line for line in out.splitlines() if line.startswith("MFU_RATIO")).split()[1])
    assert 0 < ratio < 2


def test_convert_quick_prints_ratios():
    out = run_bench("convert.py", "--quick")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    for direction in ("hf-to-megatron", "megatron-to-hf"):
        assert result[direction]["time_ratio"] > 0 and result[direction]["memory_ratio"] > 0


def test_loss_quick_prints_ratios():
    out = run_bench("loss.py", "--quick")
    ratios = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
              if line.startswith(("MEMORY_RATIO", "TIME_RATIO"))}
    assert set(ratios) == {"MEMORY_RATIO", "TIME_RATIO"} and all(v > 0 for v in ratios.values())


def test_train_step_tiny_prints_ratio_and_losses_agree():
    out = run_bench("train_step.py", "--prompts", "2", "--samples", "2", "--response-len", "8", "--steps", "1")
    assert "LOSS_CHECK passed" in out.splitlines()
    ratio = float(next(line for line in out.splitlines() if line.startswith("TRAIN_STEP_RATIO ")).split()[1])
    assert ratio > 0
