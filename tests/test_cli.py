"""One ``vopd`` command: --version, and exit codes that mean the same in every subcommand (0 done, 1 the work
failed, 2 bad usage or input)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

from megatron_vopd.cli import main
from megatron_vopd.runtime.torchrun import ROOT


def vopd(*args):
    return subprocess.run([sys.executable, "-m", "megatron_vopd.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_version():
    proc = vopd("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"vopd {version('megatron-vopd')}"


def test_a_missing_subcommand_is_a_usage_error_everywhere(capsys):
    for args in ([], ["data"]):
        assert main(args) == 2
        assert "usage: vopd" in capsys.readouterr().err
    proc = vopd("convert")
    assert proc.returncode == 2 and "usage: vopd convert" in proc.stderr


def test_plan_exits_1_when_nothing_fits(capsys):
    assert main(["plan", "--recipe", "qwen3-vl-8b", "--nodes", "1", "--gpu-gib", "40"]) == 1
    assert "does NOT fit" in capsys.readouterr().out
    assert main(["plan", "--recipe", "qwen3-vl-8b", "--nodes", "1"]) == 0
