"""``QwenVLFamily``: the parts of ``Architecture`` every Qwen-VL family provides the same way.

A family's package holds ``model.py`` (``build_model``), ``bridge.py`` (``mapping_table``), ``hf_config.py``
(``hf_config``) and ``sizes.py`` (``parameter_counts``); this class imports them when called (the package
itself stays torch-free), and gives the mrope position ids and the image processor of the family's preset.
"""

from __future__ import annotations

import importlib

from megatron_vopd.architecture import Architecture


class QwenVLFamily(Architecture):
    package: str  # the family's package, e.g. "megatron_vopd.models.qwen3_vl"

    def part(self, module: str):
        """The family's module ``module`` (model, bridge, hf_config, sizes)."""
        return importlib.import_module(f"{self.package}.{module}")

    def image_processor(self, m, *, min_pixels: int, max_pixels: int):
        """transformers' Qwen2VLImageProcessor arithmetic with this tower's patch and merge sizes."""
        from megatron_vopd.data.image_processing import PRESETS, QwenVLImageProcessor

        v = m.vision
        return QwenVLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=v.patch_size,
                                    temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
                                    image_mean=PRESETS[self.tokenizer]["image_mean"],
                                    image_std=PRESETS[self.tokenizer]["image_std"])

    def build_model(self, model, parallel, te_available=None, init_weights=True):
        return self.part("model").build_model(model, parallel, te_available=te_available, init_weights=init_weights)

    def mapping_table(self, model) -> list:
        return self.part("bridge").mapping_table(model)

    def hf_config(self, model):
        return self.part("hf_config").hf_config(model)

    def parameter_counts(self, model) -> dict[str, int]:
        return self.part("sizes").parameter_counts(model)

    def position_ids(self, model, input_ids, image_grid_thw, attention_mask=None):
        from megatron_vopd.models.mrope import mrope_position_ids

        return mrope_position_ids(input_ids, image_grid_thw, image_token_id=model.image_token_id,
                                  spatial_merge_size=model.vision.spatial_merge_size, attention_mask=attention_mask)

    def save_qwen3_vl_processor(self, out_dir, min_pixels: int | None, max_pixels: int | None) -> None:
        """The processor files of the families with Qwen3-VL's tower (transformers' Qwen3VLProcessor)."""
        from megatron_vopd.data.processor_files import save_qwen3_vl_processor

        save_qwen3_vl_processor(out_dir, self.tokenizer, min_pixels=min_pixels or self.min_pixels,
                                max_pixels=max_pixels or self.max_pixels)
