"""A mapping table resolved for one model config: lookup by Megatron name or by HF name.

Each registered architecture has ONE table (``Architecture.mapping_table``: ``ModelConfig ->
list[Mapping]``), used by conversion and by weight sync alike.
"""

from __future__ import annotations

from megatron_vopd.architecture import architecture
from megatron_vopd.bridge.mappings import Mapping


class MappingTable:
    def __init__(self, arch: str, mappings: list[Mapping]):
        self.arch, self.mappings = arch, mappings
        self.by_megatron = {m.megatron: m for m in mappings}
        self.by_hf = {h: m for m in mappings if m.export for h in m.hf}

    @classmethod
    def for_config(cls, cfg) -> MappingTable:
        return cls(cfg.arch, architecture(cfg.arch).mapping_table(cfg))

    def megatron(self, name: str) -> Mapping:
        try:
            return self.by_megatron[name]
        except KeyError:
            raise KeyError(f"Megatron parameter {name!r} is not in the mapping table") from None

    def hf_names(self) -> set[str]:
        return set(self.by_hf)
