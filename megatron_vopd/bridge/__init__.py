"""HF <-> Megatron parameter mappings (one table per architecture) and their distribution over TP/PP."""

from megatron_vopd.bridge import qwen25_vl  # noqa: F401  (registers its table)
from megatron_vopd.bridge.registry import ARCHITECTURES, MappingTable, architecture, architecture_for_hf

__all__ = ["ARCHITECTURES", "MappingTable", "architecture", "architecture_for_hf"]
