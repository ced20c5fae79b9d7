"""Qwen3-VL's parameter counts by part, from its config alone (torch-free: `vopd plan` and the launcher)."""

from __future__ import annotations


def parameter_counts(model) -> dict[str, int]:
    """Exact parameter counts of Qwen3-VL, by part (checked against transformers by tests/test_architecture.py).

    Keys as for the other families; ``vision_merger`` includes the deepstack mergers."""
    h, ffn, heads, kv, hd = (model.hidden_size, model.ffn_hidden_size, model.num_attention_heads,
                             model.num_query_groups, model.head_dim)
    layer = (h * (heads + 2 * kv) * hd  # q/k/v, no bias
             + heads * hd * h  # o_proj
             + 2 * hd  # q/k norms
             + 3 * h * ffn  # gate, up, down
             + 2 * h)  # input and post-attention RMSNorm
    embedding = model.vocab_size * h
    lm_head = 0 if model.tie_word_embeddings else model.vocab_size * h
    decoder_layers = model.num_layers * layer

    v = model.vision
    vh, vi, m2 = v.hidden_size, v.intermediate_size, v.spatial_merge_size**2
    patch_embed = v.in_channels * v.temporal_patch_size * v.patch_size**2 * vh + vh  # Conv3d with bias
    pos_embed = v.num_position_embeddings * vh
    block = (4 * vh  # norm1, norm2 (LayerNorm weight + bias)
             + 3 * vh * vh + 3 * vh  # qkv
             + vh * vh + vh  # proj
             + vh * vi + vi + vi * vh + vh)  # fc1, fc2 with biases
    mlp = (vh * m2) * (vh * m2) + vh * m2 + (vh * m2) * v.out_hidden_size + v.out_hidden_size
    merger = 2 * vh + mlp  # LayerNorm before the 2x2 fold
    deepstack = len(v.deepstack_visual_indexes) * (2 * vh * m2 + mlp)  # LayerNorm after the fold
    vision = patch_embed + pos_embed + v.depth * block + merger + deepstack
    language_model = embedding + decoder_layers + h + lm_head
    return {
        "embedding": embedding, "decoder_layer": layer, "decoder_layers": decoder_layers,
        "final_norm": h, "lm_head": lm_head, "language_model": language_model, "vision_patch_embed": patch_embed,
        "vision_block": block, "vision_blocks": v.depth * block, "vision_merger": merger + deepstack,
        "vision": vision, "total": language_model + vision,
    }
