"""HF <-> Megatron parameter mappings (one table per architecture) and their distribution over TP/PP."""

from megatron_vopd.bridge.table import MappingTable

__all__ = ["MappingTable"]
