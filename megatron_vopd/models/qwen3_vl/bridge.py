"""The mapping table of Qwen3-VL (Hugging Face ``Qwen3VLForConditionalGeneration`` checkpoints)."""

from __future__ import annotations

import torch

from megatron_vopd.bridge.mappings import QKV, ColumnParallel, GatedMLP, Replicated, RowParallel
from megatron_vopd.models.qwen3_vl.hf_config import hf_vision_config


def _vision_parameter_names(cfg) -> list[str]:
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    with torch.device("meta"):
        tower = Qwen3VLVisionModel._from_config(hf_vision_config(cfg))
    return [name for name, _ in tower.named_parameters()]


def mapping_table(cfg) -> list:
    """Every parameter of the Megatron model at global layer numbers, with its HF name(s) and format."""
    lm = "model.language_model."
    table = [
        ColumnParallel("language_model.embedding.word_embeddings.weight", lm + "embed_tokens.weight"),
        Replicated("language_model.decoder.final_layernorm.weight", lm + "norm.weight"),
        # Tied (2B, 4B): the last pipeline stage keeps a copy of the embedding as its output layer.
        ColumnParallel("language_model.output_layer.weight",
                       lm + "embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight",
                       export=not cfg.tie_word_embeddings),
    ]
    for i in range(cfg.num_layers):
        m, h = f"language_model.decoder.layers.{i}.", f"{lm}layers.{i}."
        a, s = m + "self_attention.", h + "self_attn."
        table += [
            Replicated(m + "input_layernorm.weight", h + "input_layernorm.weight"),
            QKV(a + "linear_qkv.weight", tuple(f"{s}{p}_proj.weight" for p in "qkv")),
            Replicated(a + "q_layernorm.weight", s + "q_norm.weight"),
            Replicated(a + "k_layernorm.weight", s + "k_norm.weight"),
            RowParallel(a + "linear_proj.weight", s + "o_proj.weight"),
            Replicated(m + "pre_mlp_layernorm.weight", h + "post_attention_layernorm.weight"),
            GatedMLP(m + "mlp.linear_fc1.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight")),
            RowParallel(m + "mlp.linear_fc2.weight", h + "mlp.down_proj.weight"),
        ]
    # The vision tower (with its deepstack_merger_list) is transformers' own module, replicated: its names
    # carry over under a prefix.
    table += [Replicated("vision_model." + n, "model.visual." + n) for n in _vision_parameter_names(cfg)]
    return table
