"""`vopd plan`: exact parameter counts (against transformers on the meta device) and per-GPU memory
of the scale-out recipes checked against arithmetic written out by hand."""

from __future__ import annotations

import argparse
import math

import pytest

from megatron_vopd.config import CONFIGS_DIR, load_config, load_model_config
from megatron_vopd.plan import candidate_layouts, memory_plan, parameter_counts

SCALEOUT = CONFIGS_DIR / "scaleout"


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_parameter_counts_match_transformers(name):
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vopd.bridge.hf_config import hf_config

    model_cfg = load_model_config(name)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(hf_config(model_cfg))
    parts = {"vision": 0, "embedding": 0, "decoder_layers": 0, "final_norm": 0, "lm_head": 0}
    for n, p in model.named_parameters():  # tied weights appear once
        if ".visual." in n or n.startswith("visual."):
            parts["vision"] += p.numel()
        elif "embed_tokens" in n:
            parts["embedding"] += p.numel()
        elif ".layers." in n:
            parts["decoder_layers"] += p.numel()
        elif n.endswith("norm.weight"):
            parts["final_norm"] += p.numel()
        elif n.startswith("lm_head"):
            parts["lm_head"] += p.numel()
        else:
            raise AssertionError(f"unclassified parameter {n}")
    ours = parameter_counts(model_cfg)
    for key, value in parts.items():
        assert ours[key] == value, (name, key)
    assert ours["total"] == sum(p.numel() for p in model.parameters())
    one_layer = sum(p.numel() for n, p in model.named_parameters() if ".layers.0." in n)
    assert ours["decoder_layer"] == one_layer


GIB = 1024**3


def _vision(out_hidden):  # Qwen2.5-VL vision tower of the 3B/7B: 32 blocks, 1280 wide, MLP 3420
    patch_embed = 3 * 2 * 14 * 14 * 1280
    block = 2 * 1280 + (3 * 1280 * 1280 + 3 * 1280) + (1280 * 1280 + 1280) + (2 * 1280 * 3420 + 2 * 3420 + 3420 * 1280 + 1280)
    merger = 1280 + (5120 * 5120 + 5120) + (5120 * out_hidden + out_hidden)
    return patch_embed + 32 * block + merger


def test_3b_recipe_by_hand():
    """qwen2.5-vl-3b on 1 node: TP=1, PP=1, DP=8 with the distributed optimizer; bf16 parameters."""
    cfg = load_config(SCALEOUT / "qwen2.5-vl-3b.yaml")
    assert (cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size) == (1, 1)
    assert cfg.optimizer.distributed and cfg.model.params_dtype == "bfloat16"
    plan = memory_plan(cfg, nodes=1, gpus_per_node=8, tp=1, pp=1)
    # hidden 2048, ffn 11008, 16 heads, 2 KV heads, head dim 128, vocab 151936, 36 layers, tied
    layer = (2048 * (16 + 2 * 2) * 128 + (16 + 2 * 2) * 128) + 16 * 128 * 2048 + 3 * 2048 * 11008 + 2 * 2048
    n = 36 * layer + 151936 * 2048 + _vision(2048) + 2048  # + final norm; tied: no lm head
    assert plan["stage"] == "only" and plan["dp"] == 8 and plan["params"] == n
    assert plan["weights"] == 2 * n  # bf16
    assert plan["gradients"] == 4 * n  # fp32 main grads, full on every rank
    assert plan["masters"] == math.ceil(4 * n / 8)  # fp32 masters sharded over DP=8
    assert plan["optimizer"] == math.ceil(8 * n / 8)  # exp_avg + exp_avg_sq sharded over DP=8
    assert plan["teacher"] == 2 * n and plan["teacher_ema32"] == math.ceil(4 * n / 8)  # bf16 EMA + fp32 copy / DP
    # full recompute, s = 9216 tokens, PP=1: 36 layer inputs (bf16) + one layer (34 s h)
    activations = 36 * (2 * 9216 * 2048) + 34 * 9216 * 2048
    assert plan["activations"] == pytest.approx(activations, rel=0.10)
    assert plan["logits"] == 9216 * 151936 * 4
    assert plan["fits"]
    # without the distributed optimizer every rank holds all masters and moments (the EMA copy stays sharded)
    local = memory_plan(cfg, nodes=1, gpus_per_node=8, tp=1, pp=1, distributed_optimizer=False)
    assert local["masters"] == 4 * n and local["optimizer"] == 8 * n and local["teacher_ema32"] == plan["teacher_ema32"]
    assert not local["fits"]
    # fp32 parameters are their own masters, and an fp32 EMA teacher needs no extra copy
    fp32 = memory_plan(load_config(SCALEOUT / "qwen2.5-vl-3b.yaml", ["model.params_dtype=float32"]),
                       nodes=1, gpus_per_node=8, tp=1, pp=1)
    assert (fp32["weights"], fp32["masters"], fp32["teacher"], fp32["teacher_ema32"]) == (4 * n, 0, 4 * n, 0)


def test_7b_recipe_by_hand():
    """qwen2.5-vl-7b on 1 node, planned at TP=2, PP=2, DP=2 with the distributed optimizer (two stages)."""
    cfg = load_config(SCALEOUT / "qwen2.5-vl-7b.yaml")
    plan = memory_plan(cfg, nodes=1, gpus_per_node=8, tp=2, pp=2)
    # hidden 3584, ffn 18944, 28 heads, 4 KV heads, head dim 128, vocab 152064, 28 layers, untied
    layer = (3584 * (28 + 2 * 4) * 128 + (28 + 2 * 4) * 128) + 28 * 128 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    first_stage = 14 * math.ceil(layer / 2) + 152064 * 3584 // 2 + _vision(3584)
    last_stage = 14 * math.ceil(layer / 2) + 3584 + 152064 * 3584 // 2
    assert first_stage > last_stage
    assert plan["stage"] == "first" and plan["dp"] == 2 and plan["params"] == first_stage
    assert plan["weights"] == 2 * first_stage
    assert plan["gradients"] == 4 * first_stage
    assert plan["masters"] == math.ceil(4 * first_stage / 2)
    assert plan["optimizer"] == math.ceil(8 * first_stage / 2)
    assert plan["teacher"] == 2 * first_stage and plan["teacher_ema32"] == math.ceil(4 * first_stage / 2)
    activations = 2 * 14 * (2 * 9216 * 3584) + 34 * 9216 * 3584 / 2
    assert plan["activations"] == pytest.approx(activations, rel=0.10)
    # vLLM: 0.4 * 80 GiB minus the bf16 weights over rollout TP=2; KV 2 * 28 layers * 4 heads * 128 * 2 B / 2
    total_params = 28 * layer + 2 * 152064 * 3584 + 3584 + _vision(3584)
    assert plan["rollout_weights"] == 2 * total_params // 2
    kv_budget = int(0.4 * 80 * GIB) - total_params
    assert plan["kv_cache"] == kv_budget
    assert plan["kv_tokens"] == kv_budget // (2 * 28 * 4 * 128 * 2 // 2)
    assert plan["training_budget"] == 80 * GIB - int(0.4 * 80 * GIB)
    total = sum(plan[k] for k in ("weights", "gradients", "masters", "optimizer", "teacher", "teacher_ema32",
                                  "activations", "logits"))
    assert plan["training_total"] == total and plan["fits"]
    # the same model without recompute stores every layer: s h (34 + 5 a s / h) / TP per layer, x PP in flight
    no_rc = load_config(SCALEOUT / "qwen2.5-vl-7b.yaml", ["model.recompute=false"])
    p = memory_plan(no_rc, nodes=1, gpus_per_node=8, tp=2, pp=2, flash_attention=False)
    assert p["activations"] == pytest.approx(2 * 14 * 9216 * 3584 * (34 + 5 * 28 * 9216 / 3584) / 2, rel=0.10)


def test_recipes_are_the_most_data_parallel_layout_that_fits():
    """Each scale-out recipe's layout is the first fitting candidate (most data-parallel first) or, where
    that one leaves under 10% of the training budget free, the next fitting one of the same DP size."""
    for recipe, nodes in (("qwen2.5-vl-3b", 1), ("qwen2.5-vl-7b", 1), ("qwen2.5-vl-32b", 4), ("qwen2.5-vl-72b", 8)):
        cfg = load_config(SCALEOUT / f"{recipe}.yaml")
        fitting = [p for p in candidate_layouts(cfg, nodes, 8) if p["fits"]]
        roomy = [p for p in fitting if p["dp"] == fitting[0]["dp"] and p["training_total"] <= 0.9 * p["training_budget"]]
        best = (roomy or fitting)[0]
        assert (cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size) == (best["tp"], best["pp"]), recipe


def test_teacher_current_has_no_copy():
    cfg = load_config(SCALEOUT / "qwen2.5-vl-7b.yaml", ["distill.teacher=current"])
    plan = memory_plan(cfg, nodes=1, gpus_per_node=8, tp=2, pp=2)
    assert plan["teacher"] == 0 and plan["teacher_ema32"] == 0
    fixed = memory_plan(load_config(SCALEOUT / "qwen2.5-vl-7b.yaml", ["distill.teacher=fixed"]), nodes=1, gpus_per_node=8,
                        tp=2, pp=2)
    assert fixed["teacher"] == 2 * fixed["params"] and fixed["teacher_ema32"] == 0  # frozen: no fp32 copy


@pytest.mark.parametrize("recipe,nodes", [("qwen2.5-vl-3b", 1), ("qwen2.5-vl-7b", 1), ("qwen2.5-vl-32b", 4),
                                          ("qwen2.5-vl-72b", 8)])
def test_scaleout_recipes_fit(recipe, nodes):
    cfg = load_config(SCALEOUT / f"{recipe}.yaml")
    plan = memory_plan(cfg, nodes=nodes, gpus_per_node=8, tp=cfg.parallel.tensor_model_parallel_size,
                       pp=cfg.parallel.pipeline_model_parallel_size)
    assert plan["fits"], plan


def test_layouts_respect_head_divisibility():
    cfg7 = load_config(SCALEOUT / "qwen2.5-vl-7b.yaml")  # 28 heads, 4 KV groups
    tps = {p["tp"] for p in candidate_layouts(cfg7, 1, 8)}
    assert tps == {1, 2, 4}  # 8 does not divide 28 heads
    cfg3 = load_config(SCALEOUT / "qwen2.5-vl-3b.yaml")  # 16 heads but only 2 KV groups
    assert {p["tp"] for p in candidate_layouts(cfg3, 1, 8)} == {1, 2}
    plans = candidate_layouts(cfg7, 1, 8)
    assert all(cfg7.model.num_layers % p["pp"] == 0 and 8 % (p["tp"] * p["pp"]) == 0 for p in plans)
    fits = [p["fits"] for p in plans]
    assert fits == sorted(fits, reverse=True)  # fitting layouts first


def _parser():
    from megatron_vopd.commands.plan import register

    parser = argparse.ArgumentParser(prog="vopd")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_prints_plan_and_table(capsys):
    args = _parser().parse_args(["plan", "--recipe", "qwen2.5-vl-7b", "--nodes", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "TP=4 PP=1 DP=2" in out and "vLLM KV cache" in out and "master weights (fp32)" in out
    assert "candidate layouts" in out and "KV tokens" in out
    table_rows = [line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "4 "))]
    assert len(table_rows) == len(candidate_layouts(load_config(SCALEOUT / "qwen2.5-vl-7b.yaml"), 1, 8))


def test_cli_path_and_distributed_optimizer(capsys):
    args = _parser().parse_args(["plan", "--recipe", str(SCALEOUT / "qwen2.5-vl-72b.yaml"), "--nodes", "4",
                                 "--distributed-optimizer"])
    assert args.func(args) == 1  # no layout of 72B fits 4 nodes: the exit code says so
    out = capsys.readouterr().out
    assert "does not divide 32 GPUs" in out  # the recipe's own TP=8 x PP=8 needs 8 nodes
    assert "distributed over DP" in out


def test_cli_unknown_recipe(capsys):
    args = _parser().parse_args(["plan", "--recipe", "no-such-recipe", "--nodes", "1"])
    assert args.func(args) == 2
    assert "no-such-recipe" in capsys.readouterr().err


@pytest.mark.parametrize("rollout_tp,engines", [(1, 16), (2, 8), (8, 2)])
def test_engines_on_every_gpu_and_the_memory_of_each_phase(rollout_tp, engines):
    """2 nodes x 8 GPUs: world / rollout TP engines; while generating a GPU holds the persistent training
    state + the vLLM budget, while training the training total + the vLLM budget, or no vLLM when asleep."""
    for sleep in (0, 1, 2):
        cfg = load_config(SCALEOUT / "qwen3-vl-8b.yaml", [f"rollout.tensor_parallel_size={rollout_tp}",
                                                          f"rollout.sleep={sleep}"])
        plan = memory_plan(cfg, nodes=2, gpus_per_node=8, tp=4, pp=1)
        assert plan["engines"] == engines and plan["engines_per_node"] == engines // 2
        persistent = sum(plan[k] for k in ("weights", "gradients", "masters", "optimizer", "teacher", "teacher_ema32"))
        vllm = int(cfg.rollout.gpu_memory_utilization * 80 * GIB)
        assert plan["phase_generation"] == persistent + vllm
        assert plan["phase_training"] == plan["training_total"] + (0 if sleep else vllm)
        assert plan["training_budget"] == 80 * GIB - (0 if sleep else vllm)
        assert plan["fits"] == (max(plan["phase_generation"], plan["phase_training"]) <= 80 * GIB
                                and plan["rollout_sequences"] >= 1)


def test_an_engine_cannot_span_nodes():
    from megatron_vopd.config import ConfigError

    cfg = load_config(SCALEOUT / "qwen2.5-vl-7b.yaml", ["rollout.tensor_parallel_size=4"])
    with pytest.raises(ConfigError, match="an engine's ranks must share a node"):
        memory_plan(cfg, nodes=2, gpus_per_node=2, tp=2, pp=1)
