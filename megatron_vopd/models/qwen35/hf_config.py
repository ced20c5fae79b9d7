"""Qwen3.5's Hugging Face ``config.json`` (``text_config`` + ``vision_config``) <-> our ``ModelConfig``."""

from __future__ import annotations

from megatron_vopd.bridge.hf_config import HFConfigError, get_key, hf_params_dtype
from megatron_vopd.config import ModelConfig
from megatron_vopd.models.qwen3_vision import hf_vision_kwargs, read_vision

HF_ARCHITECTURE = "Qwen3_5ForConditionalGeneration"


def hf_vision_config(cfg: ModelConfig):
    """transformers' config of the vision tower described by ``cfg.vision``."""
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig

    return Qwen3_5VisionConfig(**hf_vision_kwargs(cfg.vision))


def model_config(raw: dict, src: str, vision_config: type, decoder_config: type) -> ModelConfig:
    """The ModelConfig of a Qwen3.5 config.json (``raw``, read from ``src``)."""
    text = get_key(raw, "text_config", src)
    vis = get_key(raw, "vision_config", src)
    rope = text.get("rope_parameters") or {}
    if "mrope_section" not in rope or "rope_theta" not in rope:
        raise HFConfigError(f"{src}: text_config.rope_parameters needs mrope_section and rope_theta")
    heads = get_key(text, "num_attention_heads", src)
    hidden = get_key(text, "hidden_size", src)
    layers = get_key(text, "num_hidden_layers", src)
    layer_types = text.get("layer_types") or [
        "full_attention" if (i + 1) % text.get("full_attention_interval", 4) == 0 else "linear_attention"
        for i in range(layers)]
    return ModelConfig(
        arch="qwen3.5",
        num_layers=layers, hidden_size=hidden, ffn_hidden_size=get_key(text, "intermediate_size", src),
        num_attention_heads=heads, num_query_groups=text.get("num_key_value_heads", heads),
        kv_channels=text.get("head_dim") or hidden // heads, vocab_size=get_key(text, "vocab_size", src),
        max_position_embeddings=text.get("max_position_embeddings", 32768), rope_theta=float(rope["rope_theta"]),
        mrope_section=list(rope["mrope_section"]), rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        image_token_id=raw.get("image_token_id", 248056), video_token_id=raw.get("video_token_id", 248057),
        vision_start_token_id=raw.get("vision_start_token_id", 248053),
        vision_end_token_id=raw.get("vision_end_token_id", 248054),
        vision=read_vision(vis, src, vision_config, hidden),
        decoder=decoder_config(
            layer_types=list(layer_types), partial_rotary=float(rope.get("partial_rotary_factor", 0.25)),
            linear_conv_kernel_dim=text.get("linear_conv_kernel_dim", 4),
            linear_key_head_dim=get_key(text, "linear_key_head_dim", src),
            linear_value_head_dim=get_key(text, "linear_value_head_dim", src),
            linear_num_key_heads=get_key(text, "linear_num_key_heads", src),
            linear_num_value_heads=get_key(text, "linear_num_value_heads", src),
            mamba_ssm_dtype=text.get("mamba_ssm_dtype")),
        params_dtype=hf_params_dtype(raw if ("dtype" in raw or "torch_dtype" in raw) else text),  # published: text_config.dtype
    )


def hf_config(cfg: ModelConfig):
    """transformers' ``Qwen3_5Config`` for ``cfg`` (``.save_pretrained(dir)`` writes config.json)."""
    from transformers import Qwen3_5Config

    d = cfg.decoder
    return Qwen3_5Config(
        text_config=dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_query_groups, head_dim=cfg.head_dim,
            max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
            tie_word_embeddings=cfg.tie_word_embeddings, layer_types=list(d.layer_types),
            linear_conv_kernel_dim=d.linear_conv_kernel_dim, linear_key_head_dim=d.linear_key_head_dim,
            linear_value_head_dim=d.linear_value_head_dim, linear_num_key_heads=d.linear_num_key_heads,
            linear_num_value_heads=d.linear_num_value_heads,
            **({"mamba_ssm_dtype": d.mamba_ssm_dtype} if d.mamba_ssm_dtype else {}),
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                             "partial_rotary_factor": d.partial_rotary, "mrope_section": list(cfg.mrope_section),
                             "mrope_interleaved": True}),
        vision_config=hf_vision_config(cfg).to_dict(),
        image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id, vision_end_token_id=cfg.vision_end_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings, architectures=[HF_ARCHITECTURE], dtype=cfg.params_dtype,
    )
