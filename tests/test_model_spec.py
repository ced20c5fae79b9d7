"""Layer-spec selection, the Megatron TransformerConfig we build, FP8 settings, and the CLI's config command."""

import subprocess
import sys

import pytest
import torch

from megatron_vopd.config import ConfigError, ParallelConfig, load_model_config
from megatron_vopd.models.qwen25_vl.model import transformer_config
from megatron_vopd.models.specs import checked_transformer_impl, fp8_settings


@pytest.fixture
def tiny():
    return load_model_config("tiny-qwen2.5-vl")


def test_auto_picks_local_without_transformer_engine(tiny):
    tiny.transformer_impl = "auto"
    assert checked_transformer_impl(tiny, te_available=False) == "local"
    assert checked_transformer_impl(tiny, te_available=True) == "transformer_engine"


def test_transformer_engine_requested_without_it_is_refused(tiny):
    tiny.transformer_impl = "transformer_engine"
    with pytest.raises(ConfigError, match="model.transformer_impl"):
        checked_transformer_impl(tiny, te_available=False)


@pytest.mark.parametrize("impl", ["auto", "local"])
def test_fp8_without_transformer_engine_is_refused(tiny, impl):
    tiny.transformer_impl, tiny.fp8 = impl, "hybrid"
    with pytest.raises(ConfigError, match=r"model\.fp8.*Transformer Engine"):
        checked_transformer_impl(tiny, te_available=False)


def test_fp8_settings_map_format_and_recipe(tiny):
    assert fp8_settings(tiny) == {}
    tiny.fp8, tiny.fp8_recipe = "e4m3", "blockwise"
    assert fp8_settings(tiny) == {"fp8": "e4m3", "fp8_recipe": "blockwise", "fp8_param": False}


@pytest.mark.parametrize("fmt", ["e4m3", "hybrid"])
@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "blockwise"])
def test_fp8_format_and_recipe_reach_megatrons_transformer_config(tiny, fmt, recipe):
    """Every FP8 format x recipe is accepted by megatron-core's own TransformerConfig checks and lands there
    unchanged; the parameters stay bf16 (FP8 is compute-only, so weight sync sends bf16)."""
    tiny.params_dtype, tiny.fp8, tiny.fp8_recipe = "bfloat16", fmt, recipe
    cfg = transformer_config(tiny, ParallelConfig(tensor_model_parallel_size=2), "transformer_engine")
    assert (cfg.fp8, cfg.fp8_recipe, cfg.fp8_param) == (fmt, recipe, False)
    assert cfg.bf16 and cfg.params_dtype == torch.bfloat16


def test_transformer_config_is_qwen2_decoder(tiny):
    cfg = transformer_config(tiny, ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), "local")
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels) == \
        (tiny.num_layers, tiny.hidden_size, tiny.num_attention_heads, tiny.num_query_groups, tiny.kv_channels)
    assert cfg.normalization == "RMSNorm" and cfg.gated_linear_unit and cfg.add_qkv_bias and not cfg.add_bias_linear
    assert cfg.layernorm_epsilon == tiny.rms_norm_eps and list(cfg.mrope_section) == tiny.mrope_section
    assert cfg.activation_func is torch.nn.functional.silu and not cfg.rotary_interleaved
    assert (cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size) == (2, 2)
    assert cfg.params_dtype == torch.float32 and cfg.fp8 is None


def test_bf16_recipe_sets_bf16(tiny):
    tiny.params_dtype = "bfloat16"
    cfg = transformer_config(tiny, ParallelConfig(), "local")
    assert cfg.bf16 and cfg.params_dtype == torch.bfloat16 and cfg.pipeline_dtype == torch.bfloat16


def _vopd(*args):
    return subprocess.run([sys.executable, "-m", "megatron_vopd.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_help_lists_commands():
    out = _vopd("--help")
    assert out.returncode == 0 and "demo" in out.stdout and "config" in out.stdout


def test_cli_config_prints_overridden_recipe_and_names_bad_key():
    ok = _vopd("config", "configs/demo.yaml", "parallel.tensor_model_parallel_size=2")
    assert ok.returncode == 0, ok.stderr
    assert "tensor_model_parallel_size: 2" in ok.stdout
    bad = _vopd("config", "configs/demo.yaml", "parallel.tensor_model_parallel_size=3")
    assert bad.returncode == 2 and "parallel.tensor_model_parallel_size" in bad.stderr
