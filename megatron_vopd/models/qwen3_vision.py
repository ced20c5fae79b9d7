"""The Qwen3-VL vision tower's config section, shared by the families that use that tower (Qwen3-VL, Qwen3.5):
its fields, their validation, transformers' config keys in and out, and its parameter counts. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from megatron_vopd.bridge.hf_config import get_key


@dataclass
class VisionConfig:
    """The tower (HF ``vision_config``): 16-px patches, learned position embedding, 2x2 merger."""

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


SIZES = ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
         "temporal_patch_size", "spatial_merge_size", "out_hidden_size", "num_position_embeddings")


def check_vision(v: VisionConfig, hidden_size: int) -> list[str]:
    """Messages for impossible tower settings (``hidden_size``: the language model's)."""
    errors = [f"model.vision.{name}={getattr(v, name)} must be > 0" for name in SIZES if getattr(v, name) <= 0]
    if errors:
        return errors
    if v.out_hidden_size != hidden_size:
        errors.append(f"model.vision.out_hidden_size={v.out_hidden_size} must equal model.hidden_size={hidden_size}")
    if v.hidden_size % v.num_heads:
        errors.append(f"model.vision.num_heads={v.num_heads} must divide model.vision.hidden_size={v.hidden_size}")
    side = round(v.num_position_embeddings ** 0.5)
    if side * side != v.num_position_embeddings:
        errors.append(f"model.vision.num_position_embeddings={v.num_position_embeddings} must be a square")
    return errors


def hf_vision_kwargs(v: VisionConfig) -> dict:
    """transformers' vision_config keys of the section (they are named as ours)."""
    return {k: list(x) if isinstance(x, (list, tuple)) else x for k, x in asdict(v).items()}


def read_vision(vis: dict, src: str, vision_config: type, hidden_size: int):
    """The section of a config.json ``vision_config`` (published defaults for the optional keys)."""
    known = {"in_channels": 3, "patch_size": 16, "temporal_patch_size": 2, "spatial_merge_size": 2,
             "out_hidden_size": hidden_size, "num_position_embeddings": 2304, "hidden_act": "gelu_pytorch_tanh"}
    values = {k: vis.get(k, known[k]) if k in known else get_key(vis, k, src) for k in vision_config.__dataclass_fields__}
    return vision_config(**{k: list(x) if isinstance(x, (list, tuple)) else x for k, x in values.items()})


def vision_parameter_counts(v: VisionConfig, deepstack_mergers: int = 0) -> dict[str, int]:
    """Parameters of the tower by part: patch embedding (Conv3d with bias) + position table, one block, the
    merger (LayerNorm before the 2x2 fold) plus ``deepstack_mergers`` deepstack mergers (LayerNorm after it)."""
    vh, vi, m2 = v.hidden_size, v.intermediate_size, v.spatial_merge_size**2
    block = (4 * vh  # norm1, norm2 (LayerNorm weight + bias)
             + 3 * vh * vh + 3 * vh  # qkv
             + vh * vh + vh  # proj
             + vh * vi + vi + vi * vh + vh)  # fc1, fc2 with biases
    mlp = (vh * m2) * (vh * m2) + vh * m2 + (vh * m2) * v.out_hidden_size + v.out_hidden_size
    patch_embed = v.in_channels * v.temporal_patch_size * v.patch_size**2 * vh + vh + v.num_position_embeddings * vh
    merger = 2 * vh + mlp + deepstack_mergers * (2 * vh * m2 + mlp)
    return {"vision_patch_embed": patch_embed, "vision_block": block, "vision_blocks": v.depth * block,
            "vision_merger": merger, "vision": patch_embed + v.depth * block + merger}
