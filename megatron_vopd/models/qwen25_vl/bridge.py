"""The mapping table of Qwen2.5-VL (Hugging Face ``Qwen2_5_VLForConditionalGeneration`` checkpoints)."""

from __future__ import annotations

import torch

from megatron_vopd.bridge.mappings import QKV, ColumnParallel, GatedMLP, Replicated, RowParallel
from megatron_vopd.models.qwen25_vl.hf_config import hf_vision_config


def _vision_parameter_names(cfg) -> list[str]:
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    with torch.device("meta"):
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(hf_vision_config(cfg))
    return [name for name, _ in tower.named_parameters()]


def mapping_table(cfg) -> list:
    """Every parameter of the Megatron model at global layer numbers, with its HF name(s) and format."""
    table = [
        ColumnParallel("language_model.embedding.word_embeddings.weight", "model.embed_tokens.weight"),
        Replicated("language_model.decoder.final_layernorm.weight", "model.norm.weight"),
        # Tied: the last pipeline stage keeps a copy of the embedding as its output layer.
        ColumnParallel("language_model.output_layer.weight",
                       "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight",
                       export=not cfg.tie_word_embeddings),
    ]
    for i in range(cfg.num_layers):
        m, h = f"language_model.decoder.layers.{i}.", f"model.layers.{i}."
        table += [
            Replicated(m + "input_layernorm.weight", h + "input_layernorm.weight"),
            QKV(m + "self_attention.linear_qkv.weight", tuple(f"{h}self_attn.{p}_proj.weight" for p in "qkv")),
            QKV(m + "self_attention.linear_qkv.bias", tuple(f"{h}self_attn.{p}_proj.bias" for p in "qkv")),
            RowParallel(m + "self_attention.linear_proj.weight", h + "self_attn.o_proj.weight"),
            Replicated(m + "pre_mlp_layernorm.weight", h + "post_attention_layernorm.weight"),
            GatedMLP(m + "mlp.linear_fc1.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight")),
            RowParallel(m + "mlp.linear_fc2.weight", h + "mlp.down_proj.weight"),
        ]
    # The vision tower is transformers' own module, replicated: its names carry over under a prefix.
    table += [Replicated("vision_model." + n, "visual." + n) for n in _vision_parameter_names(cfg)]
    return table
