"""``vopd convert megatron-to-hf`` of a training run: ``--ckpt RUN_DIR`` exports the run's latest checkpoint,
``--weights teacher`` its EMA teacher copy (the fp32 copy of a bf16 run, rounded as the teacher's forward
weights are), bit for bit against the weights the run held; a run without a copy is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from megatron_vopd.runtime.torchrun import ROOT

pytestmark = pytest.mark.slow

MAKE_RUN = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from megatron_vopd.bridge.export import save_hf_weights
    from megatron_vopd.bridge.table import MappingTable
    from megatron_vopd.checks.sync import perturb
    from megatron_vopd.config import OptimizerConfig, ParallelConfig, load_model_config
    from megatron_vopd.distill.teacher import Teacher
    from megatron_vopd.models.qwen25_vl.model import build_model
    from megatron_vopd.runtime import destroy_distributed, init_distributed
    from megatron_vopd.train.checkpoint import save_checkpoint
    from megatron_vopd.train.optim import build_optimizer

    root, teacher_mode = Path(sys.argv[1]), sys.argv[2]
    cfg = load_model_config("tiny-qwen2.5-vl")
    cfg.transformer_impl, cfg.params_dtype = "local", "bfloat16"
    init_distributed(1, 1, seed=0)
    model = build_model(cfg, ParallelConfig())
    teacher = Teacher(teacher_mode, model, lambda: build_model(cfg, ParallelConfig(), init_weights=False), 0.05)
    with torch.no_grad():
        perturb(model, seed=1, scale=0.05)
    optimizer = build_optimizer(model, OptimizerConfig(), cfg)
    teacher.update(model)  # 5% of the way to the perturbed student (ema); the copy stays (fixed) or is it (current)
    save_checkpoint(root / "run", 3, optimizer=optimizer, model_cfg=cfg, state={"step": 3},
                    teacher=teacher if teacher.is_copy else None)
    table = MappingTable.for_config(cfg)
    save_hf_weights(model, table, cfg, root / "want_student")
    save_hf_weights(teacher.model, table, cfg, root / "want_teacher")
    destroy_distributed()
""")


def vopd(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "megatron_vopd.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_run_folder_exports_the_latest_student_and_the_ema_teacher(tmp_path):
    made = subprocess.run([sys.executable, "-c", MAKE_RUN, str(tmp_path), "ema"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert made.returncode == 0, made.stderr[-4000:]
    for weights in ("student", "teacher"):
        proc = vopd("convert", "megatron-to-hf", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / weights),
                    "--weights", weights)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"iter_0000003 ({weights} weights)" in proc.stdout + proc.stderr
        got, want = tensors(tmp_path / weights), tensors(tmp_path / f"want_{weights}")
        assert got.keys() == want.keys() and len(got) > 10
        assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])][:5]
    student, teacher = tensors(tmp_path / "student"), tensors(tmp_path / "teacher")
    assert any(not torch.equal(student[k], teacher[k]) for k in student)  # two different sets of weights


def test_a_run_without_a_teacher_copy_is_refused(tmp_path):
    made = subprocess.run([sys.executable, "-c", MAKE_RUN, str(tmp_path), "current"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert made.returncode == 0, made.stderr[-4000:]
    proc = vopd("convert", "megatron-to-hf", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "t"),
                "--weights", "teacher")
    assert proc.returncode == 2 and "holds no teacher copy" in proc.stderr and "export the student" in proc.stderr
