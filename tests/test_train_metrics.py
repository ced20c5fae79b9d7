"""megatron_vopd.train.metrics: console line, log interval, JSONL (with resume), TensorBoard, W&B error."""

import json
import sys

import numpy as np
import pytest
import torch

from megatron_vopd.config import LoggingConfig
from megatron_vopd.train.metrics import MetricsLogger, progress_line

FULL = {
    "loss": 0.12341,
    "loss/anchor": 0.04561,
    "tokens_per_s": 1234.4,
    "time/rollout": 1.2,
    "time/sync": 0.31,
    "time/teacher": 0.52,
    "time/student": 1.1,
    "time/optimizer": 0.08,
    "lr": 5e-4,
    "grad_norm": 0.853,
    "agreement": 0.912,
    "answer_entropy": 1.2,
}


def test_progress_line_format():
    line = progress_line(3, 150, FULL)
    assert line == (
        "step    3/150 | loss 0.1234 | anchor 0.0456 | 1234 tok/s | "
        "rollout 1.20s sync 0.31s teacher 0.52s student 1.10s optim 0.08s | "
        "lr 5.0e-04 | gnorm 0.85 | agree 0.91 | ans-H 1.20"
    )


def test_progress_line_missing_and_extra_keys():
    line = progress_line(10, 20, {"loss": torch.tensor(0.5), "time/step": 2.5, "eval/full_acc": np.float32(0.75)})
    assert line == "step   10/20 | loss 0.5000 | step 2.50s | eval/full_acc 0.75"
    for absent in ("anchor", "tok/s", "rollout", "lr", "gnorm", "agree", "ans-H"):
        assert absent not in line
    assert progress_line(1, 5, {"response_len": 311.6}) == "step    1/5 | len 312"


def test_log_interval(tmp_path, capsys):
    logger = MetricsLogger(LoggingConfig(log_interval=2, jsonl_path=str(tmp_path / "m.jsonl")), total_steps=5)
    logged = [s for s in range(1, 6) if logger.log(s, {"loss": float(s)}) is not None]
    logger.close()
    assert logged == [2, 4, 5]
    out = capsys.readouterr().out.splitlines()
    assert out == ["step    2/5 | loss 2.0000", "step    4/5 | loss 4.0000", "step    5/5 | loss 5.0000"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 5]


def test_jsonl_roundtrip_and_resume(tmp_path):
    path = tmp_path / "sub" / "m.jsonl"
    cfg = LoggingConfig(jsonl_path=str(path))
    logger = MetricsLogger(cfg, total_steps=10, run_config={"seed": 1})
    for s in range(1, 5):
        logger.log(s, {"loss": torch.tensor(s * 0.5), "eval/full_acc": np.float64(0.25 * s)})
    logger.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["loss"] == 1.5 and rows[2]["eval/full_acc"] == 0.75
    assert all(isinstance(r["time"], float) and set(r) == {"step", "time", "loss", "eval/full_acc"} for r in rows)
    assert "seed" not in path.read_text()  # run_config is not written to JSONL

    logger = MetricsLogger(cfg, total_steps=10, resume_step=2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    logger.log(3, {"loss": 9.0})
    logger.log(4, {"loss": 8.0})
    logger.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 0.5), (2, 1.0), (3, 9.0), (4, 8.0)]
    assert not list(path.parent.glob("*.tmp*"))


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    logger = MetricsLogger(LoggingConfig(tensorboard_dir=str(tb)), total_steps=3, run_config={"lr": 1e-4})
    for s in range(1, 4):
        logger.log(s, {"loss": 1.0 / s, "time/rollout": 0.5 * s})
    logger.close()
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert {"loss", "time/rollout"} <= set(acc.Tags()["scalars"])
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3])
    rollout = acc.Scalars("time/rollout")
    assert [(e.step, e.value) for e in rollout] == [(1, 0.5), (2, 1.0), (3, 1.5)]


def test_wandb_missing_names_key_and_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, installed or not
    with pytest.raises(RuntimeError) as exc:
        MetricsLogger(LoggingConfig(wandb_project="vopd"), total_steps=1)
    assert "logging.wandb_project" in str(exc.value) and "megatron-vopd[wandb]" in str(exc.value)
    # a non-logging rank never touches wandb
    MetricsLogger(LoggingConfig(wandb_project="vopd"), total_steps=1, enabled=False).close()


def test_disabled_writes_nothing(tmp_path, capsys):
    cfg = LoggingConfig(jsonl_path=str(tmp_path / "m.jsonl"), tensorboard_dir=str(tmp_path / "tb"))
    logger = MetricsLogger(cfg, total_steps=2, enabled=False, run_config={"a": 1})
    assert logger.log(1, {"loss": 1.0}) is None
    assert logger.log(2, {"loss": 1.0}) is None
    logger.close()
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""


def test_relative_logging_paths_follow_checkpoint_dir(tmp_path):
    """The demo recipe's relative paths land under each run's checkpoint.dir: a second run with another
    checkpoint.dir never appends to the first one's metrics or TensorBoard folder."""
    from megatron_vopd.config import load_config

    files = {}
    for run in ("run1", "run2"):
        cfg = load_config("configs/demo.yaml", [f"checkpoint.dir={tmp_path / run}"])
        logger = MetricsLogger(cfg.logging, total_steps=1, root=cfg.checkpoint.dir)
        logger.log(1, {"loss": 0.5})
        logger.close()
        files[run] = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        assert any((tmp_path / run / "tensorboard").iterdir())
    assert len(files["run1"]) == len(files["run2"]) == 1
    absolute = MetricsLogger(LoggingConfig(jsonl_path=str(tmp_path / "abs.jsonl")), total_steps=1, root="elsewhere")
    absolute.log(1, {"loss": 0.5})
    absolute.close()
    assert (tmp_path / "abs.jsonl").is_file()
