"""Training checkpoints (megatron_vopd.train.checkpoint): an exact round trip of weights, EMA teacher,
AdamW state, RNG and trainer state; keep_last rotation and same-step replacement; a SIGKILL in the
middle of a save leaves the previous checkpoint intact; TP=2 checkpoints load at TP=1; clear errors.

Megatron's parallel state and the CPU shims are process-wide, so each scenario runs in a subprocess:
this module is also the worker (``python -m tests.test_train_checkpoint SCENARIO DIR``, or under
torchrun), printing one ``RESULT {json}`` line. The tiny Qwen2.5-VL runs with a 2048-token vocabulary
(special tokens renumbered) so a checkpoint holds ~1M parameters instead of 40M: the tests stay fast.
"""

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from megatron_vopd.train.checkpoint import latest_checkpoint, load_checkpoint
from tests.mp import ROOT, torchrun

WORKER = "tests.test_train_checkpoint"


def run_worker(scenario, folder, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", WORKER, scenario, str(folder)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and results, out[-4000:]
    return results[-1]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One worker process for the round trip and the rotation scenarios (each in its own folder)."""
    tmp = tmp_path_factory.mktemp("single")
    return tmp, run_worker("single", tmp)


def test_roundtrip_restores_everything_exactly(single):
    r = single[1]["roundtrip"]
    assert r["perturbed"] == {"weights": False, "teacher": False, "optimizer": False, "draws": False}  # the load has work to do
    assert r["restored"] == {"weights": True, "teacher": True, "optimizer": True, "draws": True}, r
    assert r["state"] == {"step": 2, "scheduler": {"last_epoch": 2, "lr": [0.001]}, "data": {"epoch": 0, "position": 17}}
    assert r["optimizer_entries"] > 50 and r["optimizer_step"] == 2.0
    assert r["load_model_matches"] and r["model_config_matches"]  # the bridge reads an iteration folder as is
    assert sorted(r["files"]) == [".metadata", "common.pt", "metadata.json", "rng", "vopd_model.yaml"], r["files"]
    assert r["latest"] == "iter_0000002\n"


def test_keep_last_rotation_replacement_and_errors(single):
    tmp, r = single[0] / "rotation", single[1]["rotation"]
    assert r["after_four"] == ["iter_0000003", "iter_0000004", "latest"]
    assert r["latest_after_four"].endswith("iter_0000004")
    assert r["resaved_step_4_loads_new_weights"] and not r["resaved_step_4_loads_old_weights"]
    assert r["after_resave"] == ["iter_0000003", "iter_0000004", "latest"]
    assert r["keep_one_older_step"] == ["iter_0000001", "latest"]  # never deletes what it just wrote
    assert r["keep_all"] == ["iter_0000001", "iter_0000005", "iter_0000006", "latest"]
    root = str(tmp / "ckpt")
    assert "model_only" in r["model_only_error"] and "not a training one" in r["model_only_error"]
    assert root in r["no_teacher_error"] and "teacher." in r["no_teacher_error"]
    assert r["keep_last_zero_error"].startswith("ValueError") and "keep_last=0" in r["keep_last_zero_error"]


def test_sigkill_during_save_leaves_the_previous_checkpoint_intact(tmp_path):
    root = tmp_path / "ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    log = open(tmp_path / "save_loop.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", WORKER, "save_loop", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while not ((root / "latest").is_file() and any(root.glob("iter_*.tmp"))):
            assert proc.poll() is None, (tmp_path / "save_loop.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no save in progress seen"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and its helper processes, mid-save
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert any(root.glob("iter_*.tmp")), "the kill did not land during a save"
    latest = latest_checkpoint(root)
    assert latest is not None and (latest / "metadata.json").is_file()
    r = run_worker("verify_latest", tmp_path)
    assert r["latest"] == latest.name and r["weights_are_base_plus_step"], r


def test_not_a_checkpoint_is_named(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "iter_0000003.tmp").mkdir()  # a leftover of a killed save: ignored
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="not a Megatron distributed checkpoint") as e:
        load_checkpoint(tmp_path / "iter_0000003.tmp", optimizer=None)
    assert str(tmp_path / "iter_0000003.tmp") in str(e.value)
    (tmp_path / "latest").write_text("iter_0000003\n")
    with pytest.raises(FileNotFoundError) as e:
        latest_checkpoint(tmp_path)
    assert str(tmp_path / "latest") in str(e.value) and str(tmp_path / "iter_0000003") in str(e.value)


@pytest.mark.slow
def test_tp2_checkpoint_loads_at_tp1(tmp_path):
    code, result, out = torchrun(WORKER, 2, "tp2_save", str(tmp_path))
    assert code == 0 and result is not None, out[-4000:]
    r = run_worker("tp1_load", tmp_path)
    assert r["weights_equal"] and r["teacher_equal"], r
    assert r["exp_avg_equal"] and r["exp_avg_sq_equal"] and r["optimizer_entries"] > 50, r
    assert r["state"] == {"step": 3}
    assert "RNG not restored" in r["warnings"]


def test_bf16_roundtrip_and_cross_dtype_loads_are_exact(tmp_path):
    r = run_worker("precision", tmp_path)
    # bf16 run: fp32 masters, moments, the EMA's fp32 copy and the bf16 weights restored bit for bit
    assert r["bf16_perturbed"] == {"weights": False, "masters": False, "ema32": False, "optimizer": False}
    assert r["bf16_restored"] == {"weights": True, "masters": True, "ema32": True, "optimizer": True}, r
    assert r["bf16_stored_dtypes"] == {"weights": "bfloat16", "masters": "float32", "teacher": "float32"}, r
    # an fp32 run's checkpoint into a bf16 run: the masters ARE the stored fp32 weights, the weights their rounding
    assert r["fp32_to_bf16"] == {"masters_exact": True, "weights_rounded": True, "moments": True, "ema32_exact": True}, r
    # a bf16 run's checkpoint into an fp32 run: the weights are the stored masters, not the rounded weights
    assert r["bf16_to_fp32"] == {"weights_are_masters": True, "moments": True, "teacher_is_ema32": True}, r
    assert r["model_only_from_bf16_is_masters"], r  # load_model (conversion, checkpoint.load) reads the masters
    assert r["fp16_restored"] == {"masters": True, "moments": True, "scaler": True}, r


def test_torch_adamw_fallback_round_trips(tmp_path):
    """On CUDA without TE/apex megatron-core steps torch's AdamW (step count per parameter): simulated
    here by undoing the fused_adam shim, bf16 and fp32 checkpoints restore its state exactly."""
    r = run_worker("torch_adamw", tmp_path)
    assert r == {"bfloat16": {"inner": "AdamW", "restored": True, "step": 2.0},
                 "float32": {"inner": "AdamW", "restored": True, "step": 2.0}}, r


@pytest.mark.slow
def test_distributed_optimizer_checkpoint_loads_without_it(tmp_path):
    """DP=2 with the distributed optimizer (masters and moments sharded over DP) and the EMA's fp32 copy
    sharded over DP saves in model space: a DP=1 run with the non-distributed bf16 optimizer resumes with
    exactly the same masters, moments and fp32 EMA."""
    code, result, out = torchrun(WORKER, 2, "dp2_distributed_save", str(tmp_path))
    assert code == 0 and result is not None, out[-4000:]
    # the bf16 EMA teacher's fp32 copy is sharded over DP too, and updates exactly as an unsharded one
    assert result == {"ema_sharded": True, "ema_equals_unsharded": True}, result
    r = run_worker("dp1_load_distributed", tmp_path)
    assert r == {"masters_equal": True, "exp_avg_equal": True, "exp_avg_sq_equal": True, "weights_equal": True,
                 "teacher_equal": True, "step": 2, "masters": r["masters"]} and r["masters"] > 50, r


# --------------------------------------------------------------------------------------------- worker

VOCAB = 2048


def tiny_cfg():
    from megatron_vopd.config import load_model_config

    cfg = load_model_config("tiny-qwen2.5-vl")
    cfg.transformer_impl = "local"
    cfg.vocab_size = VOCAB
    cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.image_token_id, cfg.video_token_id = 2000, 2001, 2002, 2003
    return cfg


def make_batch(cfg):
    from megatron_vopd.checks.common import next_token_targets
    from megatron_vopd.checks.layouts import make_batch as layout_batch

    batch = layout_batch(cfg)
    ids = batch["input_ids"]
    special = torch.isin(ids, torch.tensor([cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.image_token_id]))
    batch["input_ids"] = torch.where(special, ids, ids % 1900)
    return next_token_targets(batch, batch["logit_positions"])


class Run:
    """The tiny model at the current layout, the training optimizer (Megatron DDP + optimizer) over it
    and an EMA teacher."""

    def __init__(self, tp=1, seed=0, dtype="float32", distributed=False):
        from megatron_vopd.config import OptimizerConfig, ParallelConfig
        from megatron_vopd.distill.teacher import Teacher
        from megatron_vopd.models.qwen25_vl.model import build_model
        from megatron_vopd.runtime import init_distributed
        from megatron_vopd.train.optim import build_optimizer

        self.info = init_distributed(tp, 1, seed=seed, timeout_s=300)
        self.cfg, parallel = tiny_cfg(), ParallelConfig(tensor_model_parallel_size=tp)
        self.cfg.params_dtype = dtype
        self.model = build_model(self.cfg, parallel)
        self.opt = build_optimizer(self.model, OptimizerConfig(lr=1e-3, weight_decay=0.1, warmup_steps=0, clip_grad=0.0,
                                                               distributed=distributed), self.cfg)
        from megatron.core import parallel_state as ps

        group = ps.get_data_parallel_group() if self.info.dp_size > 1 else None
        self.teacher = Teacher("ema", self.model, lambda: build_model(self.cfg, parallel, init_weights=False), ema_rate=0.5,
                               group=group)
        self.steps = 0
        self.reference_ema = {n: p.detach().float().clone() for n, p in self.model.named_parameters()}

    def train(self, steps):
        from megatron_vopd.checks.common import cross_entropy_loss
        from megatron_vopd.train.schedule import forward_backward

        batch = make_batch(self.cfg)
        for _ in range(steps):
            self.opt.zero_grad()
            forward_backward(self.opt.ddp, [batch], cross_entropy_loss)
            self.opt.step(self.steps)
            self.steps += 1
            self.teacher.update(self.model)
            for n, p in self.model.named_parameters():  # the EMA in fp32, unsharded, for comparison
                self.reference_ema[n].lerp_(p.detach().float(), 0.5)

    def save(self, root, step, state, teacher=True, **kw):
        from megatron_vopd.train.checkpoint import save_checkpoint

        return save_checkpoint(root, step, optimizer=self.opt, model_cfg=self.cfg, state=state,
                               teacher=self.teacher if teacher else None, **kw)

    def load(self, path, teacher=True):
        return load_checkpoint(path, optimizer=self.opt, teacher=self.teacher if teacher else None)

    def inner(self):
        """The torch optimizer inside Megatron's wrapper."""
        return self.opt.megatron.chained_optimizers[0].optimizer

    def masters(self):
        """{parameter name: its fp32 master} (the parameter itself in an fp32 run)."""
        wrapper = self.opt.megatron.chained_optimizers[0]
        if not hasattr(wrapper, "fp32_from_float16_groups"):
            return params(self.model)
        pairs = {id(p): m for g16, g32 in zip(wrapper.float16_groups, wrapper.fp32_from_float16_groups)
                 for p, m in zip(g16, g32)}
        return {n: pairs[id(p)].detach().clone() for n, p in self.model.named_parameters()}


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def draws():
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    with get_cuda_rng_tracker().fork():
        tracker = torch.rand(3)
    return [torch.rand(4), random.random(), np.random.rand(3), tracker]


@torch.no_grad()
def shift(model, value):
    for p in model.parameters():
        p.add_(value)


def error(fn) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported to the test
        return f"{type(e).__name__}: {e}"
    return "no error"


def roundtrip(tmp):
    from megatron_vopd.bridge.megatron_ckpt import load_model, read_model_config
    from megatron_vopd.config import ParallelConfig, to_dict
    from megatron_vopd.models.qwen25_vl.model import build_model

    run, root = Run(), tmp / "ckpt"
    run.train(2)
    state = {"step": 2, "scheduler": {"last_epoch": 2, "lr": [0.001]}, "data": {"epoch": 0, "position": 17}}
    want = {"weights": params(run.model), "teacher": params(run.teacher.model), "optimizer": copy.deepcopy(run.inner().state_dict())}
    path = run.save(root, 2, state)
    want["draws"] = draws()

    def check():
        opt = run.inner().state_dict()
        return {"weights": same(want["weights"], params(run.model)), "teacher": same(want["teacher"], params(run.teacher.model)),
                "optimizer": same(want["optimizer"], opt),
                "draws": same(want["draws"], draws())}

    run.train(1)  # moves weights, teacher and optimizer state, draws dropout numbers
    shift(run.teacher.model, 0.5)
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    perturbed = check()
    loaded = run.load(path)
    restored = check()
    fresh = build_model(run.cfg, ParallelConfig(), init_weights=False)
    load_model(fresh, path)
    return {
        "perturbed": perturbed, "restored": restored, "state": loaded, "files": [f.name for f in path.iterdir() if not f.name.endswith(".distcp")],
        "optimizer_entries": len(run.inner().state_dict()["state"]),
        "optimizer_step": float(run.inner().state_dict()["param_groups"][0]["step"]),
        "load_model_matches": same(want["weights"], params(fresh)),
        "model_config_matches": to_dict(read_model_config(path)) == to_dict(run.cfg),
        "latest": (root / "latest").read_text()}


def rotation(tmp):
    from megatron_vopd.bridge.megatron_ckpt import save_model

    run, root = Run(), tmp / "ckpt"
    listing = lambda: sorted(p.name for p in root.iterdir())  # noqa: E731
    for step in range(1, 5):
        run.save(root, step, {"step": step}, keep_last=2)
    result = {"after_four": listing(), "latest_after_four": str(latest_checkpoint(root))}
    old = params(run.model)
    shift(run.model, 1.0)
    new = params(run.model)
    run.save(root, 4, {"step": 4}, keep_last=2)
    shift(run.model, 1.0)
    run.load(root / "iter_0000004")
    result.update(resaved_step_4_loads_new_weights=same(new, params(run.model)),
                  resaved_step_4_loads_old_weights=same(old, params(run.model)), after_resave=listing())
    run.save(root, 1, {"step": 1}, keep_last=1)
    result["keep_one_older_step"] = listing()
    run.save(root, 5, {"step": 5})
    run.save(root, 6, {"step": 6})
    result["keep_all"] = listing()
    save_model(run.model, tmp / "model_only", run.cfg)
    from megatron_vopd.train.checkpoint import save_checkpoint

    no_teacher = save_checkpoint(root, 7, optimizer=run.opt, model_cfg=run.cfg, state={})
    result.update(model_only_error=error(lambda: run.load(tmp / "model_only")),
                  no_teacher_error=error(lambda: run.load(no_teacher)),
                  keep_last_zero_error=error(lambda: run.save(root, 8, {}, keep_last=0)))
    return result


def scenario_single(tmp):
    result = {"roundtrip": roundtrip(tmp / "roundtrip"), "rotation": rotation(tmp / "rotation")}
    print("RESULT " + json.dumps(result), flush=True)


def scenario_save_loop(tmp):
    run = Run()
    for step in range(1, 10_000):
        shift(run.model, 1.0)  # weights = initial + step
        run.save(tmp / "ckpt", step, {"step": step}, keep_last=2)


def scenario_verify_latest(tmp):
    run = Run()  # the same seed: the same initial weights as the killed run
    base = params(run.model)
    latest = latest_checkpoint(tmp / "ckpt")
    state = run.load(latest, teacher=False)
    ok = state["step"] == int(latest.name[5:]) and all(torch.equal(p, base[n] + state["step"]) for n, p in params(run.model).items())
    print("RESULT " + json.dumps({"latest": latest.name, "weights_are_base_plus_step": ok}), flush=True)


def full(model, table):
    from megatron_vopd.bridge.distribution import iter_full_parameters

    return {n: t.clone() for n, t in iter_full_parameters(model, table)}


def optimizer_as_models(run, key):
    """AdamW's ``key`` state in a model of the same layout (to gather it like the weights)."""
    from megatron_vopd.config import ParallelConfig
    from megatron_vopd.models.qwen25_vl.model import build_model

    shadow = build_model(run.cfg, ParallelConfig(tensor_model_parallel_size=run.info.tp_size), init_weights=False)
    with torch.no_grad():
        for p, s in zip(run.model.parameters(), shadow.parameters()):
            s.copy_(run.inner().state[p][key])
    return shadow


def scenario_tp2_save(tmp):
    from megatron_vopd.bridge import MappingTable

    run = Run(tp=2)
    run.train(3)
    table = MappingTable.for_config(run.cfg)
    gathered = {"weights": full(run.model, table), "teacher": full(run.teacher.model, table),
                "exp_avg": full(optimizer_as_models(run, "exp_avg"), table),
                "exp_avg_sq": full(optimizer_as_models(run, "exp_avg_sq"), table)}
    run.save(tmp / "ckpt", 3, {"step": 3})
    if run.info.rank == 0:
        torch.save(gathered, tmp / "tp2_full.pt")
        print("RESULT " + json.dumps({"saved": True}), flush=True)


def scenario_tp1_load(tmp):
    import logging

    from megatron_vopd.bridge import MappingTable

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("megatron_vopd.train.checkpoint").addHandler(handler)
    run = Run(tp=1, seed=5)
    state = run.load(latest_checkpoint(tmp / "ckpt"))
    table = MappingTable.for_config(run.cfg)
    want = torch.load(tmp / "tp2_full.pt", weights_only=True)
    print("RESULT " + json.dumps({
        "weights_equal": same(want["weights"], full(run.model, table)), "teacher_equal": same(want["teacher"], full(run.teacher.model, table)),
        "exp_avg_equal": same(want["exp_avg"], full(optimizer_as_models(run, "exp_avg"), table)),
        "exp_avg_sq_equal": same(want["exp_avg_sq"], full(optimizer_as_models(run, "exp_avg_sq"), table)),
        "optimizer_entries": len(run.inner().state), "state": state, "warnings": " ".join(messages)}), flush=True)


def moments(run) -> dict:
    """{name: {exp_avg, exp_avg_sq}} of a non-distributed run, by model parameter name."""
    wrapper = run.opt.megatron.chained_optimizers[0]
    inner = wrapper.optimizer
    if hasattr(wrapper, "fp32_from_float16_groups"):
        main = {id(p): m for g16, g32 in zip(wrapper.float16_groups, wrapper.fp32_from_float16_groups)
                for p, m in zip(g16, g32)}
    else:
        main = {id(p): p for p in run.model.parameters()}
    return {n: {k: inner.state[main[id(p)]][k].clone() for k in ("exp_avg", "exp_avg_sq")}
            for n, p in run.model.named_parameters()}


def scenario_precision(tmp):
    from megatron_vopd.bridge.megatron_ckpt import load_model
    from megatron_vopd.config import ParallelConfig
    from megatron_vopd.models.qwen25_vl.model import build_model
    from megatron.core import dist_checkpointing

    result = {}
    bf16 = Run(dtype="bfloat16")
    bf16.train(2)
    want = {"weights": params(bf16.model), "masters": bf16.masters(), "ema32": {k: v.clone() for k, v in bf16.teacher.fp32.full().items()},
            "optimizer": moments(bf16)}
    path = bf16.save(tmp / "bf16", 2, {"step": 2})
    meta = dist_checkpointing.load_tensors_metadata(str(path))
    key = "language_model.decoder.layers.self_attention.linear_proj.weight"

    def check():
        return {"weights": same(want["weights"], params(bf16.model)), "masters": same(want["masters"], bf16.masters()),
                "ema32": same(want["ema32"], bf16.teacher.fp32.full()), "optimizer": same(want["optimizer"], moments(bf16))}

    bf16.train(1)
    result["bf16_perturbed"] = check()
    bf16.load(path)
    result["bf16_restored"] = check()
    result["bf16_stored_dtypes"] = {"weights": str(meta[key].dtype).removeprefix("torch."),
                                    "masters": str(meta["optimizer.state.fp32_param." + key].dtype).removeprefix("torch."),
                                    "teacher": str(meta["teacher." + key].dtype).removeprefix("torch.")}

    fp32 = Run(dtype="float32", seed=1)
    fp32.train(2)
    fp32_path = fp32.save(tmp / "fp32", 2, {"step": 2})
    into_bf16 = Run(dtype="bfloat16", seed=2)
    into_bf16.load(fp32_path)
    stored, masters = params(fp32.model), into_bf16.masters()
    result["fp32_to_bf16"] = {
        "masters_exact": same(stored, masters),
        "weights_rounded": same({k: v.to(torch.bfloat16) for k, v in stored.items()}, params(into_bf16.model)),
        "moments": same(moments(fp32), moments(into_bf16)),
        "ema32_exact": same(params(fp32.teacher.model), into_bf16.teacher.fp32.full())}

    into_fp32 = Run(dtype="float32", seed=3)
    into_fp32.load(path)
    result["bf16_to_fp32"] = {"weights_are_masters": same(want["masters"], params(into_fp32.model)),
                              "moments": same(want["optimizer"], moments(into_fp32)),
                              "teacher_is_ema32": same(want["ema32"], params(into_fp32.teacher.model))}
    fp16 = Run(dtype="float16", seed=4)  # fp16: the dynamic loss scaler's state travels too
    fp16.train(2)
    want16 = {"masters": fp16.masters(), "moments": moments(fp16),
              "scaler": copy.deepcopy(fp16.opt.megatron.chained_optimizers[0].grad_scaler.state_dict())}
    path16 = fp16.save(tmp / "fp16", 2, {"step": 2})
    fp16.opt.megatron.chained_optimizers[0].grad_scaler.update(True)  # an overflow: the scale changes
    fp16.train(1)
    fp16.load(path16)
    result["fp16_restored"] = {"masters": same(want16["masters"], fp16.masters()),
                               "moments": same(want16["moments"], moments(fp16)),
                               "scaler": same(want16["scaler"], fp16.opt.megatron.chained_optimizers[0].grad_scaler.state_dict())}
    cfg32 = tiny_cfg()
    fresh = build_model(cfg32, ParallelConfig(), init_weights=False)
    load_model(fresh, path)
    result["model_only_from_bf16_is_masters"] = same(want["masters"], params(fresh))
    print("RESULT " + json.dumps(result), flush=True)


def scenario_torch_adamw(tmp):
    from megatron.core import optimizer as megatron_optimizer

    from megatron_vopd.runtime import init_distributed

    init_distributed(1, 1)  # applies the CPU shims; then undo the FusedAdam one, as on CUDA without TE/apex
    megatron_optimizer.Adam, megatron_optimizer.USING_PYTORCH_OPTIMIZER = torch.optim.AdamW, True
    result = {}
    for dtype in ("bfloat16", "float32"):
        run = Run(dtype=dtype)
        assert run.opt.per_parameter_step
        run.train(2)
        want = {"inner": copy.deepcopy(run.inner().state_dict()), "masters": run.masters()}
        path = run.save(tmp / dtype, 2, {"step": 2})
        run.train(1)
        run.load(path)
        inner = run.inner().state_dict()
        result[dtype] = {"inner": type(run.inner()).__name__,
                         "restored": same(want["inner"], inner) and same(want["masters"], run.masters()),
                         "step": float(inner["state"][0]["step"])}
    print("RESULT " + json.dumps(result), flush=True)


def distributed_state(run) -> dict:
    """{name: {param, exp_avg, exp_avg_sq}} in model space, gathered by Megatron's own distributed optimizer."""
    wrapper = run.opt.megatron.chained_optimizers[0]
    state = wrapper.get_parameter_state_dp_zero(return_on_all_ranks=True)
    names = {id(p): n for n, p in run.model.named_parameters()}
    out = {}
    for buffer_index, buffer in enumerate(wrapper.buffers):
        flat = next(iter(state[buffer_index].values()))
        for p, (start, end, _) in buffer.param_index_map.items():
            out[names[id(p)]] = {k: flat[k][start:end].view(p.shape).clone() for k in ("param", "exp_avg", "exp_avg_sq")}
    return out


def scenario_dp2_distributed_save(tmp):
    run = Run(dtype="bfloat16", distributed=True)
    run.train(2)
    run.save(tmp / "ckpt", 2, {"step": 2})
    gathered = distributed_state(run)
    teacher = {k: v.clone() for k, v in run.teacher.fp32.full().items()}
    sharded = run.teacher.fp32.shard.numel() < sum(p.numel() for p in run.model.parameters())
    if run.info.rank == 0:
        torch.save({"state": gathered, "weights": params(run.model), "teacher": teacher}, tmp / "dp2_state.pt")
        print("RESULT " + json.dumps({"ema_sharded": sharded, "ema_equals_unsharded": same(run.reference_ema, teacher)}),
              flush=True)


def scenario_dp1_load_distributed(tmp):
    run = Run(dtype="bfloat16", seed=7)
    state = run.load(latest_checkpoint(tmp / "ckpt"))
    want = torch.load(tmp / "dp2_state.pt", weights_only=True)
    got, masters = moments(run), run.masters()
    print("RESULT " + json.dumps({
        "masters_equal": same({n: s["param"] for n, s in want["state"].items()}, masters),
        "exp_avg_equal": same({n: s["exp_avg"] for n, s in want["state"].items()}, {n: m["exp_avg"] for n, m in got.items()}),
        "exp_avg_sq_equal": same({n: s["exp_avg_sq"] for n, s in want["state"].items()},
                                 {n: m["exp_avg_sq"] for n, m in got.items()}),
        "weights_equal": same(want["weights"], params(run.model)), "step": state["step"],
        "teacher_equal": same(want["teacher"], run.teacher.fp32.full()),
        "masters": len(masters)}), flush=True)


if __name__ == "__main__":
    from pathlib import Path

    globals()["scenario_" + sys.argv[1]](Path(sys.argv[2]))
