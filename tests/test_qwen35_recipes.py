"""Qwen3.5 at real size without running it: the 4B/9B recipes equal the published config.json files,
exact parameter counts against transformers (meta device), the plan's Gated DeltaNet state and layers,
the released configuration's fit, the Transformer Engine spec's settings and parameter names, and
conversion skipping the multi-token-prediction tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from megatron_vopd.architecture import architecture
from megatron_vopd.config import CONFIGS_DIR, ParallelConfig, load_config, load_model_config, to_dict
from megatron_vopd.plan import candidate_layouts, layer_activation_bytes, memory_plan, parameter_counts

FIXTURES = Path(__file__).parent / "fixtures"
QWEN35 = architecture("qwen3.5")
GIB = 1024**3


def published(size: str) -> dict:
    return json.loads((FIXTURES / f"qwen3.5-{size}.config.json").read_text())


@pytest.mark.parametrize("size", ["4b", "9b"])
def test_recipe_is_the_published_config(size):
    """configs/model/qwen3.5-<size>.yaml == what `vopd convert` reads from the published config.json."""
    ours = to_dict(load_model_config(f"qwen3.5-{size}"))
    theirs = to_dict(QWEN35.model_config(published(size), f"qwen3.5-{size}.config.json"))
    assert ours == theirs
    assert theirs["params_dtype"] == "bfloat16" and theirs["decoder"]["mamba_ssm_dtype"] == "float32"
    assert theirs["tie_word_embeddings"] is (size == "4b")


def test_image_processor_defaults_are_the_published_ones():
    pre = json.loads((FIXTURES / "qwen3.5.preprocessor_config.json").read_text())
    assert (QWEN35.min_pixels, QWEN35.max_pixels) == (pre["size"]["shortest_edge"], pre["size"]["longest_edge"])


@pytest.mark.parametrize("size", ["4b", "9b"])
def test_parameter_counts_match_transformers(size):
    torch = pytest.importorskip("torch")
    cfg = load_model_config(f"qwen3.5-{size}")
    with torch.device("meta"):
        model = QWEN35.hf_model_class()(QWEN35.hf_config(cfg))
    counts = parameter_counts(cfg)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["vision"] == sum(p.numel() for n, p in model.named_parameters() if ".visual." in n)
    layers = QWEN35.decoder_layers(cfg)
    for i, (kind, n) in enumerate(layers):
        assert kind == cfg.decoder.layer_types[i]
        assert n == sum(p.numel() for name, p in model.named_parameters() if f".layers.{i}." in name), i
    assert sum(n for _, n in layers) == counts["decoder_layers"]
    print(size, {k: counts[k] for k in ("language_model", "vision", "total")})


def test_rollout_cache_by_hand():
    """9B: KV of the 8 full-attention layers per token; per sequence, each of the 24 GDN layers keeps a fp32
    recurrent state (32 value heads x 128 x 128) and a bf16 conv window (3 positions of q, k, v)."""
    cfg = load_model_config("qwen3.5-9b")
    kv, state = QWEN35.rollout_cache(cfg)
    assert kv == 2 * 8 * 4 * 256 * 2
    assert state == 24 * (4 * 32 * 128 * 128 + 2 * (2 * 16 * 128 + 32 * 128) * 3)
    cfg.decoder.mamba_ssm_dtype = None  # the engine's default: its bf16 model dtype
    assert QWEN35.rollout_cache(cfg)[1] == 24 * (2 * 32 * 128 * 128 + 2 * (2 * 16 * 128 + 32 * 128) * 3)
    qwen25 = load_model_config("qwen2.5-vl-7b")
    assert architecture("qwen2.5-vl").rollout_cache(qwen25) == (2 * 28 * 4 * 128 * 2, 0)


def test_9b_recipe_plan_by_hand():
    """The scale-out recipe's layout (TP4, DP2, distributed optimizer, bf16, EMA teacher) on 8 x 80 GB."""
    cfg = load_config(CONFIGS_DIR / "scaleout" / "qwen3.5-9b.yaml")
    plan = memory_plan(cfg, nodes=1, gpus_per_node=8, tp=4, pp=1)
    m = cfg.model
    c = parameter_counts(m)
    n = sum(math.ceil(p / 4) for _, p in QWEN35.decoder_layers(m)) + 2 * math.ceil(c["embedding"] / 4) + c["vision"] + 4096
    assert plan["params"] == n and plan["dp"] == 2 and plan["stage"] == "only"
    assert plan["weights"] == 2 * n and plan["gradients"] == 4 * n
    assert plan["masters"] == math.ceil(4 * n / 2) and plan["optimizer"] == math.ceil(8 * n / 2)
    assert plan["logits"] == 9216 * (248320 // 4) * 4 and plan["teacher_logits"] == 8192 * (248320 // 4) * 2
    # full recompute: 32 layer inputs + the largest layer's activations (the Gated DeltaNet's: it keeps more)
    gdn, attn = (layer_activation_bytes(m, 9216, 4, kind=k)
                 for k in ("linear_attention", "full_attention"))
    assert gdn > attn and plan["activations"] == 32 * 2 * 9216 * 4096 + gdn
    kv, state = QWEN35.rollout_cache(m)
    assert plan["rollout_sequences"] == plan["kv_cache"] // (9216 * kv // 2 + state // 2)
    assert plan["fits"] and plan["training_total"] < 0.85 * plan["training_budget"]


@pytest.mark.parametrize("size,gib,overrides,layout", [
    ("9b", 80, [], (4, 1)),
    ("9b", 48, ["rollout.gpu_memory_utilization=0.2", "rollout.tensor_parallel_size=4"], (4, 2)),
    ("9b", 48, [], None),
    ("4b", 80, [], (1, 1)),
    ("4b", 48, ["rollout.gpu_memory_utilization=0.3"], (4, 1)),
])
def test_released_configuration_fit(size, gib, overrides, layout):
    """The README's answer: 96 prompts x 8 samples, 8192-token prompts, 1024-token answers on one node."""
    cfg = load_config(CONFIGS_DIR / "scaleout" / f"qwen3.5-{size}.yaml", overrides)
    assert (cfg.data.prompts_per_step, cfg.rollout.n_samples, cfg.data.max_prompt_length, cfg.rollout.max_tokens) \
        == (96, 8, 8192, 1024)
    fitting = [p for p in candidate_layouts(cfg, 1, 8, gpu_gib=gib) if p["fits"]]
    assert ((fitting[0]["tp"], fitting[0]["pp"]) if fitting else None) == layout


def test_layouts_respect_the_gdn_heads():
    cfg = load_config(None, ["model=tiny-qwen3.5"])
    cfg.model.decoder.linear_num_key_heads, cfg.model.decoder.linear_num_value_heads = 1, 3
    assert {p["tp"] for p in candidate_layouts(cfg, 1, 2)} == {1}


def test_te_spec_settings():
    """The Transformer Engine spec's TransformerConfig passes megatron-core's own checks: the hybrid pattern
    for its block builder (1 = Gated DeltaNet), zero-centred norms in TE; the local spec sets none of it."""
    from megatron_vopd.models.qwen35.model import transformer_config

    cfg = load_model_config("qwen3.5-9b")
    te = transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=4, pipeline_model_parallel_size=2),
                            "transformer_engine")
    assert te.transformer_impl == "transformer_engine" and te.experimental_attention_variant == "gated_delta_net"
    assert te.linear_attention_freq == [0 if (i + 1) % 4 == 0 else 1 for i in range(32)]
    assert te.layernorm_zero_centered_gamma and te.attention_output_gate and te.qk_layernorm
    local = transformer_config(cfg, ParallelConfig(), "local")
    assert local.experimental_attention_variant is None and not local.layernorm_zero_centered_gamma


@pytest.mark.parametrize("recipe", ["tiny-qwen3.5", "tiny-qwen2.5-vl"])
def test_te_table_names_the_fused_norms(recipe):
    """Under TE each pre-norm lives in the linear after it: the table renames exactly those, so conversion and
    weight sync of a TE-built model find every parameter."""
    from megatron_vopd.bridge.table import MappingTable, te_fused_norm_names

    cfg = load_model_config(recipe)
    local, te = MappingTable.for_config(cfg, "local"), MappingTable.for_config(cfg, "transformer_engine")
    renamed = {a.megatron: b.megatron for a, b in zip(local.mappings, te.mappings) if a.megatron != b.megatron}
    assert len(renamed) == 2 * cfg.num_layers and local.hf_names() == te.hf_names()
    for i in range(cfg.num_layers):
        p = f"language_model.decoder.layers.{i}."
        mixer = "in_proj" if getattr(cfg, "decoder", None) and cfg.decoder.layer_types[i] == "linear_attention" \
            else "linear_qkv"
        assert renamed[p + "input_layernorm.weight"] == f"{p}self_attention.{mixer}.layer_norm_weight"
        assert renamed[p + "pre_mlp_layernorm.weight"] == p + "mlp.linear_fc1.layer_norm_weight"
    lonely = [m for m in local.mappings if ".mlp.linear_fc1." not in m.megatron]
    with pytest.raises(ValueError, match="pre_mlp_layernorm.weight: no linear in this layer"):
        te_fused_norm_names(lonely)


def test_hf_config_roundtrip_keeps_the_ssm_dtype():
    cfg = load_model_config("qwen3.5-9b")
    raw = QWEN35.hf_config(cfg).to_dict()
    assert raw["text_config"]["mamba_ssm_dtype"] == "float32"
    assert to_dict(QWEN35.model_config(raw, "roundtrip")) == to_dict(cfg)
    tiny = load_model_config("tiny-qwen3.5")
    assert "mamba_ssm_dtype" not in QWEN35.hf_config(tiny).to_dict()["text_config"]


def test_bad_ssm_dtype_is_refused():
    from megatron_vopd.config import ConfigError

    with pytest.raises(ConfigError, match="model.decoder.mamba_ssm_dtype='fp8'"):
        load_config(None, ["model=tiny-qwen3.5", "model.decoder.mamba_ssm_dtype=fp8"])
