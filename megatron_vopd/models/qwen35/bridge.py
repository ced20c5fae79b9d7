"""The mapping table of Qwen3.5 (Hugging Face ``Qwen3_5ForConditionalGeneration`` checkpoints)."""

from __future__ import annotations

import torch

from megatron_vopd.bridge.mappings import (ColumnParallel, GatedMLP, GatedQKV, PartsColumnParallel, Replicated,
                                           RowParallel)
from megatron_vopd.models.qwen35.hf_config import hf_vision_config


def _vision_parameter_names(cfg) -> list[str]:
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

    with torch.device("meta"):
        tower = Qwen3_5VisionModel._from_config(hf_vision_config(cfg))
    return [name for name, _ in tower.named_parameters()]


def mapping_table(cfg) -> list:
    """Every parameter of the Megatron model at global layer numbers, with its HF name(s) and format."""
    d = cfg.decoder
    k, v, heads = d.linear_key_head_dim * d.linear_num_key_heads, d.linear_value_head_dim * d.linear_num_value_heads, \
        d.linear_num_value_heads
    lm = "model.language_model."
    table = [
        ColumnParallel("language_model.embedding.word_embeddings.weight", lm + "embed_tokens.weight"),
        Replicated("language_model.decoder.final_layernorm.weight", lm + "norm.weight"),
        ColumnParallel("language_model.output_layer.weight",
                       lm + "embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight",
                       export=not cfg.tie_word_embeddings),
    ]
    for i, kind in enumerate(d.layer_types):
        m, h = f"language_model.decoder.layers.{i}.", f"{lm}layers.{i}."
        table += [
            Replicated(m + "input_layernorm.weight", h + "input_layernorm.weight"),
            Replicated(m + "pre_mlp_layernorm.weight", h + "post_attention_layernorm.weight"),
            GatedMLP(m + "mlp.linear_fc1.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight")),
            RowParallel(m + "mlp.linear_fc2.weight", h + "mlp.down_proj.weight"),
        ]
        a = m + "self_attention."
        if kind == "linear_attention":
            g = h + "linear_attn."
            table += [
                PartsColumnParallel(a + "in_proj.weight", tuple(g + f"in_proj_{p}.weight" for p in ("qkv", "z", "b", "a")),
                                    parts=(k, k, v, v, heads, heads), hf_parts=(3, 1, 1, 1)),
                PartsColumnParallel(a + "conv1d.weight", g + "conv1d.weight", parts=(k, k, v), hf_parts=(3,)),
                ColumnParallel(a + "A_log", g + "A_log", engine_fp32=True),  # vLLM's GDN holds A_log in fp32
                ColumnParallel(a + "dt_bias", g + "dt_bias"),
                Replicated(a + "out_norm.weight", g + "norm.weight"),
                RowParallel(a + "out_proj.weight", g + "out_proj.weight"),
            ]
        else:
            s = h + "self_attn."
            table += [
                GatedQKV(a + "linear_qkv.weight", tuple(f"{s}{p}_proj.weight" for p in "qkv")),
                Replicated(a + "q_layernorm.weight", s + "q_norm.weight"),
                Replicated(a + "k_layernorm.weight", s + "k_norm.weight"),
                RowParallel(a + "linear_proj.weight", s + "o_proj.weight"),
            ]
    # The vision tower is transformers' own module, replicated: its names carry over under a prefix.
    table += [Replicated("vision_model." + n, "model.visual." + n) for n in _vision_parameter_names(cfg)]
    return table
