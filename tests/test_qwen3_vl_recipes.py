"""Qwen3-VL at real size without running it: the 2B/4B/8B recipes equal the published config.json files, exact
parameter counts against transformers (meta device), the 8B scale-out plan, the published preprocessor's pixel
limits, the Transformer Engine spec and table, and the configuration errors of its deepstack fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_vopd.architecture import architecture
from megatron_vopd.config import CONFIGS_DIR, ConfigError, load_config, load_model_config, to_dict
from megatron_vopd.plan import candidate_layouts, memory_plan, parameter_counts

FIXTURES = Path(__file__).parent / "fixtures"
QWEN3VL = architecture("qwen3-vl")


def published(size: str) -> dict:
    return json.loads((FIXTURES / f"qwen3-vl-{size}.config.json").read_text())


@pytest.mark.parametrize("size", ["2b", "4b", "8b"])
def test_recipe_is_the_published_config(size):
    """configs/model/qwen3-vl-<size>.yaml == what `vopd convert` reads from the published config.json (its
    layout: text_config.rope_scaling with mrope_interleaved, text_config.rope_theta)."""
    ours = to_dict(load_model_config(f"qwen3-vl-{size}"))
    theirs = to_dict(QWEN3VL.model_config(published(size), f"qwen3-vl-{size}.config.json"))
    assert ours == theirs
    assert theirs["params_dtype"] == "bfloat16" and theirs["mrope_section"] == [24, 20, 20]
    assert theirs["tie_word_embeddings"] is (size != "8b")
    assert len(theirs["vision"]["deepstack_visual_indexes"]) == 3


def test_image_processor_defaults_are_the_published_ones():
    pre = json.loads((FIXTURES / "qwen3-vl.preprocessor_config.json").read_text())
    assert (QWEN3VL.min_pixels, QWEN3VL.max_pixels) == (pre["size"]["shortest_edge"], pre["size"]["longest_edge"])
    assert pre["patch_size"] == 16 and pre["merge_size"] == 2 and pre["image_mean"] == pre["image_std"] == [0.5] * 3


@pytest.mark.parametrize("size,total", [("2b", 2_127_532_032), ("4b", 4_437_815_808), ("8b", 8_767_123_696)])
def test_parameter_counts_match_transformers(size, total):
    torch = pytest.importorskip("torch")
    cfg = load_model_config(f"qwen3-vl-{size}")
    with torch.device("meta"):
        model = QWEN3VL.hf_model_class()(QWEN3VL.hf_config(cfg))
    counts = parameter_counts(cfg)
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == total
    assert counts["vision"] == sum(p.numel() for n, p in model.named_parameters() if ".visual." in n)
    assert counts["decoder_layer"] == sum(p.numel() for n, p in model.named_parameters() if ".layers.0." in n)


def test_8b_scaleout_plan():
    """The recipe's layout (TP4 x DP2, distributed optimizer) fits the released configuration on 8 x 80 GB with
    8 GiB to spare; every attention layer keeps KV (36 layers x 8 groups x 128 x 2 (K, V) x bf16 per token)."""
    cfg = load_config(CONFIGS_DIR / "scaleout" / "qwen3-vl-8b.yaml")
    assert (cfg.data.prompts_per_step, cfg.rollout.n_samples, cfg.data.max_prompt_length, cfg.rollout.max_tokens) \
        == (96, 8, 8192, 1024)
    assert QWEN3VL.rollout_cache(cfg.model) == (2 * 36 * 8 * 128 * 2, 0)
    plan = memory_plan(cfg, nodes=1, gpus_per_node=8, tp=4, pp=1)
    assert plan["fits"] and plan["dp"] == 2 and plan["training_total"] < plan["training_budget"] - 8 * 1024**3
    fitting = [p for p in candidate_layouts(cfg, 1, 8) if p["fits"]]
    assert (fitting[0]["tp"], fitting[0]["pp"]) == (4, 1)
    assert not any(p["fits"] for p in candidate_layouts(cfg, 1, 8, gpu_gib=48))


def test_layer_spec_and_te_table():
    """The layer spec is a DeepstackLayer with q/k norms (megatron-core builds the TE variant only where TE
    imports: tools/gpu_check.sh); under TE the pre-norms live in the linear after them."""
    from megatron_vopd.bridge.table import MappingTable
    from megatron_vopd.models.qwen3_vl.model import layer_spec

    spec = layer_spec("local")
    assert spec.module.__name__ == "DeepstackLayer"
    attn = spec.submodules.self_attention.submodules
    assert attn.q_layernorm is not None and attn.k_layernorm is not None
    cfg = load_model_config("tiny-qwen3-vl")
    te = MappingTable.for_config(cfg, "transformer_engine")
    assert "language_model.decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in te.by_megatron
    assert "language_model.decoder.layers.0.self_attention.q_layernorm.weight" in te.by_megatron
    assert te.hf_names() == MappingTable.for_config(cfg, "local").hf_names()


@pytest.mark.parametrize("override,message", [
    ("model.vision.deepstack_visual_indexes=[0,3]", r"deepstack_visual_indexes=\[0, 3\] must be distinct blocks in \[0, model\.vision\.depth=3\)"),
    ("model.vision.deepstack_visual_indexes=[1,1]", r"must be distinct blocks"),
    ("model.num_layers=2", r"deepstack_visual_indexes has 3 entries.*model\.num_layers=2"),
    ("model.mrope_section=[12,10,8]", r"model\.mrope_section=\[12, 10, 8\] must have 3 entries summing to head_dim/2"),
])
def test_bad_deepstack_and_rope_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model=tiny-qwen3-vl", override])


def test_published_layout_without_interleaving_is_refused():
    from megatron_vopd.bridge.hf_config import HFConfigError

    raw = published("8b")
    raw["text_config"]["rope_scaling"]["mrope_interleaved"] = False
    with pytest.raises(HFConfigError, match="mrope_interleaved=false"):
        QWEN3VL.model_config(raw, "config.json")
