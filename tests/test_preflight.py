"""``vopd train`` checks the run's files before any process starts: missing or misnamed data files and a
``checkpoint.load`` whose model is not the recipe's fail in seconds, naming the key and the path."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import yaml

from megatron_vopd.bridge.megatron_ckpt import write_model_config
from megatron_vopd.config import load_config, load_model_config
from megatron_vopd.runtime.torchrun import ROOT
from megatron_vopd.train.preflight import preflight


def train(*overrides):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "megatron_vopd.cli", "train", "configs/demo.yaml", *overrides],
                          cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stderr, time.perf_counter() - t0


def test_missing_train_file_fails_in_seconds_naming_the_key(tmp_path):
    code, err, seconds = train(f"data.train_file={tmp_path / 'nope.jsonl'}", f"data.eval_file={tmp_path}")
    assert code == 2 and seconds < 5, (code, err, seconds)
    assert f"data.train_file={tmp_path / 'nope.jsonl'}: no such file" in err
    assert f"data.eval_file={tmp_path} is a directory, not a data file" in err
    assert "Traceback" not in err
    code, err, _ = train("data.train_file=null")
    assert code == 2 and "data.train_file is not set" in err


def test_checkpoint_load_of_another_model_is_refused_before_start(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    ckpt = tmp_path / "run" / "iter_0000004"
    ckpt.mkdir(parents=True)
    write_model_config(ckpt, load_model_config("tiny-qwen2.5-vl"))
    (tmp_path / "run" / "latest").write_text("iter_0000004\n")
    code, err, seconds = train(f"data.train_file={data}", f"checkpoint.load={tmp_path / 'run'}", "model.num_layers=2",
                               "model.params_dtype=bfloat16")
    assert code == 2 and seconds < 5, (code, err, seconds)
    assert f"checkpoint.load={tmp_path / 'run'}: the recipe's model differs from the checkpoint's ({ckpt}/" in err
    assert "model.num_layers: 2 != 4" in err and "params_dtype" not in err  # a runtime setting may differ
    cfg = load_config("configs/demo.yaml", [f"data.train_file={data}", "data.eval_file=null",
                                            f"checkpoint.load={tmp_path / 'run'}"])
    assert preflight(cfg) == []  # the same model: nothing to say
    cfg = load_config("configs/demo.yaml", [f"data.train_file={data}", "data.eval_file=null",
                                            f"checkpoint.load={tmp_path}"])
    assert preflight(cfg) == [f"checkpoint.load={tmp_path}: {tmp_path} has no vopd_model.yaml: not a megatron-vopd "
                              "checkpoint (convert a Hugging Face folder with `vopd convert hf-to-megatron`)"]
    assert yaml.safe_load((ckpt / "vopd_model.yaml").read_text())["num_layers"] == 4


def test_fewer_prompts_than_replicas_fails_before_torchrun(tmp_path):
    """It used to start vLLM and fail after 78 s ("1 non-empty responses for 2 data-parallel replicas")."""
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    code, err, seconds = train(f"data.train_file={data}", "data.eval_file=null", "checkpoint.load=null",
                               "data.prompts_per_step=1", "rollout.n_samples=1", "--nproc", "2")
    assert code == 2 and seconds < 5, (code, err, seconds)
    assert "data.prompts_per_step=1 is fewer than the 2 data-parallel replicas" in err
