"""One ``vopd`` command: --version, and exit codes that mean the same in every subcommand (0 done, 1 the work
failed, 2 bad usage or input)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest

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


@pytest.mark.slow
def test_a_conversion_prints_only_its_own_lines(tmp_path):
    """No library warning the user cannot act on: every line of both conversions (one under torchrun) is ours."""
    from tests.hf_models import save_tiny_qwen25_vl

    hf = save_tiny_qwen25_vl(tmp_path / "hf")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    for args in (["hf-to-megatron", "--hf", str(hf), "--out", str(tmp_path / "mg"), "--tp", "2"],
                 ["megatron-to-hf", "--ckpt", str(tmp_path / "mg"), "--out", str(tmp_path / "back")]):
        proc = subprocess.run([sys.executable, "-m", "megatron_vopd.cli", "convert", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        lines = (proc.stdout + proc.stderr).splitlines()
        assert proc.returncode == 0 and lines, proc.stderr[-3000:]
        assert all(line.startswith("[convert]") for line in lines), lines


def test_train_takes_a_recipe_name_and_both_spellings_of_dry_run():
    for flag in ("--dry-run", "--dryrun"):
        proc = vopd("train", "configs/demo.yaml", "data.train_file=configs/demo.yaml", "data.eval_file=null",
                    "checkpoint.load=null", flag)
        assert proc.returncode == 0 and "-m torch.distributed.run" in proc.stdout, proc.stderr[-2000:]
    proc = vopd("train", "qwen3.5-4b", "--dry-run")  # configs/scaleout/qwen3.5-4b.yaml, as vopd plan --recipe takes it
    assert proc.returncode == 2 and "rollout.tensor_parallel_size=2" in proc.stderr  # its rollout TP: not on a CPU
    proc = vopd("train", "no-such-recipe")
    assert proc.returncode == 2 and "recipe 'no-such-recipe' not found" in proc.stderr


def test_serve_auto_dtype_is_the_checkpoints(tmp_path):
    import argparse
    import json

    from megatron_vopd.commands.serve import server_command

    def dtype(config, flag="auto"):
        (tmp_path / "config.json").write_text(json.dumps(config))
        args = argparse.Namespace(ckpt=str(tmp_path), host="127.0.0.1", port=8000, dtype=flag, max_model_len=8192,
                                  tensor_parallel_size=1, served_model_name=None)
        cmd = server_command(args)
        return cmd[cmd.index("--dtype") + 1]

    assert dtype({"dtype": "float32"}) == "float32"  # vLLM's own "auto" would serve it in bfloat16 on a CPU
    assert dtype({"torch_dtype": "bfloat16"}) == "bfloat16"
    assert dtype({}) == "auto" and dtype({"dtype": "float32"}, "float16") == "float16"
