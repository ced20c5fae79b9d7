"""Qwen3-VL's parameter counts by part, from its config alone (torch-free: `vopd plan` and the launcher)."""

from __future__ import annotations

from megatron_vopd.models.qwen3_vision import vision_parameter_counts


def parameter_counts(model) -> dict[str, int]:
    """Exact parameter counts of Qwen3-VL, by part (checked against transformers by tests/test_architecture.py).

    Keys as for the other families; ``vision_patch_embed`` includes the position table, ``vision_merger`` the
    deepstack mergers."""
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

    vision = vision_parameter_counts(model.vision, deepstack_mergers=len(model.vision.deepstack_visual_indexes))
    language_model = embedding + decoder_layers + h + lm_head
    return {"embedding": embedding, "decoder_layer": layer, "decoder_layers": decoder_layers, "final_norm": h,
            "lm_head": lm_head, "language_model": language_model, **vision, "total": language_model + vision["vision"]}
