"""A mapping table resolved for one model config: lookup by Megatron name or by HF name.

Each registered architecture has ONE table (``Architecture.mapping_table``: ``ModelConfig ->
list[Mapping]``), used by conversion and by weight sync alike. The table names the local layer
spec's parameters; a model built with Transformer Engine fuses each pre-norm into the linear after it
(``TELayerNormColumnParallelLinear``), so there the norms are renamed (``te_fused_norm_names``):
``layers.N.input_layernorm.weight`` -> ``layers.N.self_attention.{linear_qkv|in_proj}.layer_norm_weight``,
``layers.N.pre_mlp_layernorm.weight`` -> ``layers.N.mlp.linear_fc1.layer_norm_weight``.
"""

from __future__ import annotations

import copy
import re

from megatron_vopd.architecture import architecture
from megatron_vopd.bridge.mappings import Mapping
from megatron_vopd.config import resolve_transformer_impl

# pre-norm -> the linears it is fused into under Transformer Engine (the first that the layer has)
FUSED_INTO = {"input_layernorm": ("self_attention.linear_qkv", "self_attention.in_proj"),
              "pre_mlp_layernorm": ("mlp.linear_fc1",)}
_NORM = re.compile(r"^(.*\.layers\.\d+\.)(input_layernorm|pre_mlp_layernorm)\.weight$")


def te_fused_norm_names(mappings: list[Mapping]) -> list[Mapping]:
    """The table with every decoder pre-norm renamed to the fused TE parameter it becomes."""
    names = {m.megatron for m in mappings}
    out = []
    for m in mappings:
        match = _NORM.match(m.megatron)
        if match:
            layer, norm = match.groups()
            targets = [t for t in FUSED_INTO[norm] if f"{layer}{t}.weight" in names]
            if not targets:
                raise ValueError(f"{m.megatron}: no linear in this layer to fuse it into ({FUSED_INTO[norm]})")
            m = copy.copy(m)
            m.megatron = f"{layer}{targets[0]}.layer_norm_weight"
        out.append(m)
    return out


class MappingTable:
    def __init__(self, arch: str, mappings: list[Mapping]):
        self.arch, self.mappings = arch, mappings
        self.by_megatron = {m.megatron: m for m in mappings}
        self.by_hf = {h: m for m in mappings if m.export for h in m.hf}

    @classmethod
    def for_config(cls, cfg, impl: str | None = None) -> MappingTable:
        """The family's table for the layer spec ``impl`` ("local" or "transformer_engine"; None: the
        spec ``cfg.transformer_impl`` resolves to here, as the model builder resolves it)."""
        mappings = architecture(cfg.arch).mapping_table(cfg)
        if (impl or resolve_transformer_impl(cfg)) == "transformer_engine":
            mappings = te_fused_norm_names(mappings)
        return cls(cfg.arch, mappings)

    def megatron(self, name: str) -> Mapping:
        try:
            return self.by_megatron[name]
        except KeyError:
            raise KeyError(f"Megatron parameter {name!r} is not in the mapping table") from None

    def hf_names(self) -> set[str]:
        return set(self.by_hf)
