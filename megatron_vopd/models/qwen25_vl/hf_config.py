"""Qwen2.5-VL's Hugging Face ``config.json`` <-> our ``ModelConfig``.

Reads both layouts transformers has written for Qwen2.5-VL: the flat one of the published
checkpoints (text fields at the top, ``rope_scaling``) and the nested one of transformers 5
(``text_config``, ``rope_parameters``).
"""

from __future__ import annotations

from megatron_vopd.bridge.hf_config import HFConfigError, get_key, hf_params_dtype
from megatron_vopd.config import ModelConfig

HF_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"


def hf_vision_config(cfg: ModelConfig):
    """transformers' config of the vision tower described by ``cfg.vision``."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    v = cfg.vision
    return Qwen2_5_VLVisionConfig(
        depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
        num_heads=v.num_heads, in_channels=v.in_channels, patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size, spatial_merge_size=v.spatial_merge_size,
        window_size=v.window_size, fullatt_block_indexes=list(v.fullatt_block_indexes),
        out_hidden_size=v.out_hidden_size, hidden_act=v.hidden_act)


def model_config(raw: dict, src: str, vision_config: type) -> ModelConfig:
    """The ModelConfig of a Qwen2.5-VL config.json (``raw``, read from ``src``)."""
    text = {**raw, **raw.get("text_config", {})}
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = rope.get("rope_theta", text.get("rope_theta"))
    if "mrope_section" not in rope or theta is None:
        raise HFConfigError(f"{src}: needs rope mrope_section and rope_theta (rope_parameters or rope_scaling)")
    vis = get_key(raw, "vision_config", src)
    heads = get_key(text, "num_attention_heads", src)
    hidden = get_key(text, "hidden_size", src)
    tied = raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    return ModelConfig(
        arch="qwen2.5-vl",
        num_layers=get_key(text, "num_hidden_layers", src), hidden_size=hidden,
        ffn_hidden_size=get_key(text, "intermediate_size", src), num_attention_heads=heads,
        num_query_groups=text.get("num_key_value_heads", heads), kv_channels=text.get("head_dim") or hidden // heads,
        vocab_size=get_key(text, "vocab_size", src), max_position_embeddings=text.get("max_position_embeddings", 128000),
        rope_theta=float(theta), mrope_section=list(rope["mrope_section"]),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)), tie_word_embeddings=bool(tied),
        image_token_id=get_key(raw, "image_token_id", src), video_token_id=raw.get("video_token_id", 151656),
        vision_start_token_id=raw.get("vision_start_token_id", 151652),
        vision_end_token_id=raw.get("vision_end_token_id", 151653),
        vision=vision_config(
            depth=get_key(vis, "depth", src), hidden_size=get_key(vis, "hidden_size", src),
            intermediate_size=get_key(vis, "intermediate_size", src), num_heads=get_key(vis, "num_heads", src),
            in_channels=vis.get("in_channels", 3), patch_size=vis.get("patch_size", 14),
            temporal_patch_size=vis.get("temporal_patch_size", 2), spatial_merge_size=vis.get("spatial_merge_size", 2),
            window_size=vis.get("window_size", 112), fullatt_block_indexes=list(vis.get("fullatt_block_indexes", [])),
            out_hidden_size=vis.get("out_hidden_size", hidden), hidden_act=vis.get("hidden_act", "silu")),
        params_dtype=hf_params_dtype(raw),
    )


def hf_config(cfg: ModelConfig):
    """transformers' ``Qwen2_5_VLConfig`` for ``cfg`` (``.save_pretrained(dir)`` writes config.json)."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_query_groups, max_position_embeddings=cfg.max_position_embeddings,
            rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_word_embeddings,
            rope_parameters={"rope_type": "default", "type": "mrope", "rope_theta": cfg.rope_theta,
                             "mrope_section": list(cfg.mrope_section)}),
        vision_config=hf_vision_config(cfg).to_dict(),
        image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id, vision_end_token_id=cfg.vision_end_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings, architectures=[HF_ARCHITECTURE],
        dtype=cfg.params_dtype,
    )
