"""Qwen3-VL's Hugging Face ``config.json`` (``text_config`` + ``vision_config``) <-> our ``ModelConfig``.

Reads the layout of the published checkpoints (``text_config.rope_scaling`` with ``mrope_section`` and
``mrope_interleaved``, ``text_config.rope_theta``) and transformers 5's (``text_config.rope_parameters``)."""

from __future__ import annotations

from megatron_vopd.bridge.hf_config import HFConfigError, get_key, hf_params_dtype
from megatron_vopd.config import ModelConfig
from megatron_vopd.models.qwen3_vision import hf_vision_kwargs, read_vision

HF_ARCHITECTURE = "Qwen3VLForConditionalGeneration"


def hf_vision_config(cfg: ModelConfig):
    """transformers' config of the vision tower described by ``cfg.vision``."""
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig

    return Qwen3VLVisionConfig(**hf_vision_kwargs(cfg.vision))


def model_config(raw: dict, src: str, vision_config: type) -> ModelConfig:
    """The ModelConfig of a Qwen3-VL config.json (``raw``, read from ``src``)."""
    text = get_key(raw, "text_config", src)
    vis = get_key(raw, "vision_config", src)
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = rope.get("rope_theta", text.get("rope_theta"))
    if "mrope_section" not in rope or theta is None:
        raise HFConfigError(f"{src}: text_config needs mrope_section (rope_parameters or rope_scaling) and rope_theta")
    if rope.get("mrope_interleaved") is False:
        raise HFConfigError(f"{src}: text_config mrope_interleaved=false: Qwen3-VL's mrope is interleaved")
    heads = get_key(text, "num_attention_heads", src)
    hidden = get_key(text, "hidden_size", src)
    return ModelConfig(
        arch="qwen3-vl",
        num_layers=get_key(text, "num_hidden_layers", src), hidden_size=hidden,
        ffn_hidden_size=get_key(text, "intermediate_size", src), num_attention_heads=heads,
        num_query_groups=text.get("num_key_value_heads", heads), kv_channels=text.get("head_dim") or hidden // heads,
        vocab_size=get_key(text, "vocab_size", src), max_position_embeddings=text.get("max_position_embeddings", 262144),
        rope_theta=float(theta), mrope_section=list(rope["mrope_section"]),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        image_token_id=raw.get("image_token_id", 151655), video_token_id=raw.get("video_token_id", 151656),
        vision_start_token_id=raw.get("vision_start_token_id", 151652),
        vision_end_token_id=raw.get("vision_end_token_id", 151653),
        vision=read_vision(vis, src, vision_config, hidden),
        params_dtype=hf_params_dtype(raw if ("dtype" in raw or "torch_dtype" in raw) else text),
    )


def hf_config(cfg: ModelConfig):
    """transformers' ``Qwen3VLConfig`` for ``cfg`` (``.save_pretrained(dir)`` writes config.json)."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_query_groups, head_dim=cfg.head_dim,
            max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
            tie_word_embeddings=cfg.tie_word_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                             "mrope_section": list(cfg.mrope_section), "mrope_interleaved": True}),
        vision_config=hf_vision_config(cfg).to_dict(),
        image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id, vision_end_token_id=cfg.vision_end_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings, architectures=[HF_ARCHITECTURE], dtype=cfg.params_dtype,
    )
