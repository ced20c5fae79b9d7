"""Qwen3.5's parameter counts by part, from its config alone (torch-free: `vopd plan` and the launcher)."""

from __future__ import annotations

from megatron_vopd.models.qwen3_vision import vision_parameter_counts


def layer_counts(model) -> dict[str, int]:
    """Parameters of one decoder layer of each kind: "linear_attention" (Gated DeltaNet) and "full_attention"."""
    d, h, ffn = model.decoder, model.hidden_size, model.ffn_hidden_size
    k, v, hv = d.linear_key_head_dim * d.linear_num_key_heads, d.linear_value_head_dim * d.linear_num_value_heads, \
        d.linear_num_value_heads
    common = 3 * h * ffn + 2 * h  # SwiGLU MLP (no bias), input and post-attention norms
    gdn = (h * (2 * k + 2 * v + 2 * hv)  # in_proj: q, k, v, z, b, a
           + (2 * k + v) * d.linear_conv_kernel_dim  # depthwise conv1d, no bias
           + 2 * hv  # A_log, dt_bias
           + d.linear_value_head_dim  # gated output norm
           + v * h)  # out_proj
    heads, groups, hd = model.num_attention_heads, model.num_query_groups, model.head_dim
    attention = h * 2 * heads * hd + 2 * h * groups * hd + heads * hd * h + 2 * hd  # q|gate, k, v, o, q/k norms
    return {"linear_attention": common + gdn, "full_attention": common + attention}


def parameter_counts(model) -> dict[str, int]:
    """Exact parameter counts of Qwen3.5, by part (checked against transformers by tests/test_architecture.py).
    ``decoder_layer`` is the largest layer (the layers differ: Gated DeltaNet or full attention)."""
    h = model.hidden_size
    per_kind = layer_counts(model)
    decoder_layers = sum(per_kind[t] for t in model.decoder.layer_types)
    embedding = model.vocab_size * h
    lm_head = 0 if model.tie_word_embeddings else model.vocab_size * h
    vision = vision_parameter_counts(model.vision)
    language_model = embedding + decoder_layers + h + lm_head
    return {"embedding": embedding, "decoder_layer": max(per_kind.values()), "decoder_layers": decoder_layers,
            "final_norm": h, "lm_head": lm_head, "language_model": language_model, **vision,
            "total": language_model + vision["vision"]}
