"""Tiny random Qwen2.5-VL checkpoints built with transformers (the real architecture and vocabulary)."""

from pathlib import Path

import torch


def save_tiny_qwen25_vl(out: Path, *, tied: bool = False, kv_heads: int = 2, layers: int = 2, seed: int = 0) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=kv_heads, rope_theta=1e6, rms_norm_eps=1e-6,
                         rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}, tie_word_embeddings=tied),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                           fullatt_block_indexes=[1]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=tied)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    with torch.no_grad():  # larger than the 0.02 init so that logits differ visibly between positions
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
    model.save_pretrained(out)
    return out


# model.arch -> the builder of its tiny random HF checkpoint (tools/gpu_check.sh)
TINY_HF = {"qwen2.5-vl": save_tiny_qwen25_vl}


def save_tiny_qwen35(out: Path, *, tied: bool = False, layers: int = 4, seed: int = 0) -> Path:
    """A tiny random Qwen3.5 (configs/model/tiny-qwen3.5.yaml's shapes) saved by transformers."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    torch.manual_seed(seed)
    layer_types = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]
    cfg = Qwen3_5Config(
        text_config=dict(vocab_size=248320, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, linear_num_key_heads=2,
                         linear_num_value_heads=4, linear_key_head_dim=64, linear_value_head_dim=64,
                         layer_types=layer_types, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                          "mrope_section": [3, 3, 2], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                           num_position_embeddings=64),
        tie_word_embeddings=tied)
    model = Qwen3_5ForConditionalGeneration(cfg)
    with torch.no_grad():  # larger than the init so that logits differ visibly; norms stay near their init
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
            elif "norm" in name:
                p.normal_(0, 0.1) if "linear_attn.norm" not in name else p.normal_(1, 0.1)
    model.save_pretrained(out)
    return out


TINY_HF["qwen3.5"] = save_tiny_qwen35


def save_tiny_qwen3_vl(out: Path, *, tied: bool = False, layers: int = 4, seed: int = 0) -> Path:
    """A tiny random Qwen3-VL (configs/model/tiny-qwen3-vl.yaml's shapes: deepstack of vision blocks 0-2
    into decoder layers 0-2) saved by transformers."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6,
                         tie_word_embeddings=tied,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [12, 10, 10],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=3, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2]),
        tie_word_embeddings=tied)
    model = Qwen3VLForConditionalGeneration(cfg)
    with torch.no_grad():  # larger than the init so that logits differ visibly; norms near their init of 1
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
            elif "norm" in name and "visual" not in name:
                p.normal_(1, 0.1)
    model.save_pretrained(out)
    return out


TINY_HF["qwen3-vl"] = save_tiny_qwen3_vl
