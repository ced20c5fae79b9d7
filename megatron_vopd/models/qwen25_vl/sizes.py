"""Qwen2.5-VL's parameter counts by part, from its config alone (torch-free: `vopd plan` and the launcher)."""

from __future__ import annotations


def parameter_counts(model) -> dict[str, int]:
    """Exact parameter counts of Qwen2.5-VL, by part (checked against transformers by tests/test_plan.py).

    Keys: embedding, decoder_layer (one layer), decoder_layers (all), final_norm, lm_head (0 when
    tied), language_model (embedding + layers + final norm + lm_head), vision_patch_embed,
    vision_block (one block), vision_blocks, vision_merger, vision (tower + merger), total."""
    h, ffn, heads, kv, hd = (model.hidden_size, model.ffn_hidden_size, model.num_attention_heads,
                             model.num_query_groups, model.head_dim)
    qkv_out = (heads + 2 * kv) * hd
    layer = (h * qkv_out + qkv_out  # q/k/v weights + biases
             + heads * hd * h  # o_proj, no bias
             + 2 * h * ffn + ffn * h  # gate, up, down, no bias
             + 2 * h)  # input and post-attention RMSNorm
    embedding = model.vocab_size * h
    lm_head = 0 if model.tie_word_embeddings else model.vocab_size * h
    final_norm = h
    decoder_layers = model.num_layers * layer

    v = model.vision
    vh, vi, m2 = v.hidden_size, v.intermediate_size, v.spatial_merge_size**2
    patch_embed = v.in_channels * v.temporal_patch_size * v.patch_size**2 * vh  # Conv3d, no bias
    block = (2 * vh  # norm1, norm2 (RMSNorm weight)
             + 3 * vh * vh + 3 * vh  # qkv
             + vh * vh + vh  # proj
             + 2 * vh * vi + 2 * vi + vi * vh + vh)  # gate/up/down with biases
    merger = (vh  # ln_q
              + (vh * m2) * (vh * m2) + vh * m2  # mlp.0
              + (vh * m2) * v.out_hidden_size + v.out_hidden_size)  # mlp.2
    vision = patch_embed + v.depth * block + merger
    language_model = embedding + decoder_layers + final_norm + lm_head
    return {
        "embedding": embedding, "decoder_layer": layer, "decoder_layers": decoder_layers,
        "final_norm": final_norm, "lm_head": lm_head, "language_model": language_model,
        "vision_patch_embed": patch_embed, "vision_block": block, "vision_blocks": v.depth * block,
        "vision_merger": merger, "vision": vision, "total": language_model + vision,
    }
