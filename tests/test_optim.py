"""train/optim.py: the CPU FusedAdam equals torch's AdamW; the optimizer built on this machine is the one
``describe`` names, with fp32 masters for half-precision parameters; the learning-rate schedule.

Megatron's parallel state and the CPU shims are process-wide: the build checks run in a subprocess
(``python -m tests.test_optim build``), printing one ``RESULT {json}`` line.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_vopd.config import OptimizerConfig
from megatron_vopd.runtime.cpu_shims import CpuFusedAdam
from megatron_vopd.train.optim import lr_at
from tests.mp import ROOT


@pytest.mark.parametrize("adam_w_mode", [True, False])
def test_cpu_fused_adam_is_torch_adam(adam_w_mode):
    torch.manual_seed(0)
    params = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    ours = [p.clone().requires_grad_() for p in params]
    ref = [p.clone().requires_grad_() for p in params]
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    opt = CpuFusedAdam([{"params": ours}, {"params": []}], adam_w_mode=adam_w_mode, **kw)
    torch_opt = (torch.optim.AdamW if adam_w_mode else torch.optim.Adam)(ref, foreach=False, **kw)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(ours, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        torch_opt.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    # FusedAdam's layout: the step in the (non-empty) group, only the moments per parameter
    assert opt.param_groups[0]["step"] == 5 and "step" not in opt.param_groups[1]
    assert set(opt.state[ours[0]]) == {"exp_avg", "exp_avg_sq"}


def test_amsgrad_is_refused():
    with pytest.raises(ValueError, match="amsgrad"):
        CpuFusedAdam([torch.zeros(2, requires_grad=True)], amsgrad=True)


def test_lr_schedule():
    cfg = OptimizerConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr=0.1, train_steps=14)
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(9, cfg) == pytest.approx(0.55) and lr_at(14, cfg) == pytest.approx(0.1)


def test_built_optimizer_matches_describe_and_keeps_fp32_masters():
    proc = subprocess.run([sys.executable, "-m", "tests.test_optim", "build"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(lines[-1][len("RESULT "):])
    for r in results:
        assert r["built"] == r["described"], r
        assert r["adam"] == "CpuFusedAdam", r
        assert r["model_dtypes"] == [r["dtype"]], r  # every parameter in params_dtype (norms included)
        assert r["master_dtypes"] == ["float32"], r  # what the optimizer steps is fp32
        assert r["main_grad_dtypes"] == ["float32"], r  # DDP accumulates fp32 grads
    assert {(r["dtype"], r["distributed"]) for r in results} == {("bfloat16", False), ("bfloat16", True),
                                                                 ("float32", False)}
    # a bf16 step changes the rounded model weights exactly as round(master)
    assert all(r["model_is_rounded_master"] for r in results), results


# --------------------------------------------------------------------------------------------- worker


def _build_all():
    from megatron_vopd.config import load_model_config
    from megatron_vopd.config import ParallelConfig
    from megatron_vopd.models.qwen25_vl.model import build_model
    from megatron_vopd.runtime import init_distributed
    from megatron_vopd.train.optim import build_optimizer, describe

    init_distributed(1, 1)
    results = []
    for dtype, distributed in (("bfloat16", False), ("bfloat16", True), ("float32", False)):
        cfg = load_model_config("tiny-qwen2.5-vl")
        cfg.params_dtype, cfg.transformer_impl = dtype, "local"
        cfg.vocab_size, cfg.image_token_id, cfg.video_token_id = 2048, 2002, 2003
        cfg.vision_start_token_id, cfg.vision_end_token_id = 2000, 2001
        ocfg = OptimizerConfig(lr=1e-3, warmup_steps=0, distributed=distributed)
        opt = build_optimizer(build_model(cfg, ParallelConfig()), ocfg, cfg)
        wrapper = opt.megatron.chained_optimizers[0]
        ids = torch.randint(0, 1000, (1, 8))
        opt.zero_grad()
        opt.ddp(ids, torch.arange(8).expand(3, 1, 8)).float().square().mean().backward()
        opt.step(0)
        masters = [p for g in wrapper.optimizer.param_groups for p in g["params"]]
        if distributed:  # each master is the shard ``param_range`` of its flattened model parameter
            pairs = [(p, m) for g16, g32 in zip(wrapper.model_float16_groups, wrapper.shard_fp32_from_float16_groups)
                     for p, m in zip(g16, g32)]
            ranges = [wrapper._get_model_param_range_map(p)["param"] for p, _ in pairs]
            rounded = bool(pairs) and all(torch.equal(p.detach().view(-1)[r.start:r.end], m.to(p.dtype))
                                          for (p, m), r in zip(pairs, ranges))
        elif dtype == "float32":
            rounded = True
        else:
            pairs = [(p, m) for g16, g32 in zip(wrapper.float16_groups, wrapper.fp32_from_float16_groups)
                     for p, m in zip(g16, g32)]
            rounded = all(torch.equal(p, m.to(p.dtype)) for p, m in pairs)
        results.append({
            "dtype": dtype, "distributed": distributed, "built": type(wrapper).__name__,
            "described": describe(ocfg, dtype, cuda=False)["optimizer"], "adam": type(wrapper.optimizer).__name__,
            "model_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in opt.model.parameters()}),
            "master_dtypes": sorted({str(m.dtype).removeprefix("torch.") for m in masters}),
            "main_grad_dtypes": sorted({str(p.main_grad.dtype).removeprefix("torch.") for p in opt.model.parameters()}),
            "model_is_rounded_master": rounded})
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "build":
        _build_all()
