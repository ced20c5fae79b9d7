"""The architectures the bridge knows, each with ONE mapping table (used by conversion and weight sync).

A table is a function ``ModelConfig -> list[Mapping]`` registered with ``@register_table``; adding an
architecture means adding its table module and importing it in ``bridge/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from megatron_vopd.bridge.mappings import Mapping


@dataclass(frozen=True)
class Architecture:
    name: str                       # our ModelConfig.arch
    hf_architectures: tuple[str, ...]  # config.json "architectures" values
    build_table: Callable           # ModelConfig -> list[Mapping]


ARCHITECTURES: dict[str, Architecture] = {}


def register_table(name: str, hf_architectures: tuple[str, ...]):
    def decorator(build_table):
        ARCHITECTURES[name] = Architecture(name, hf_architectures, build_table)
        return build_table

    return decorator


class UnknownArchitecture(ValueError):
    pass


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise UnknownArchitecture(f"architecture {name!r} has no mapping table; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def architecture_for_hf(hf_archs: list[str], source: str) -> Architecture:
    for arch in ARCHITECTURES.values():
        if any(a in arch.hf_architectures for a in hf_archs):
            return arch
    known = sorted(a for arch in ARCHITECTURES.values() for a in arch.hf_architectures)
    raise UnknownArchitecture(f"{source}: architectures {hf_archs} have no mapping table; known: {', '.join(known)}")


class MappingTable:
    """A table resolved for one model config: lookup by Megatron name or by HF name."""

    def __init__(self, arch: str, mappings: list[Mapping]):
        self.arch, self.mappings = arch, mappings
        self.by_megatron = {m.megatron: m for m in mappings}
        self.by_hf = {h: m for m in mappings if m.export for h in m.hf}

    @classmethod
    def for_config(cls, cfg) -> MappingTable:
        return cls(cfg.arch, architecture(cfg.arch).build_table(cfg))

    def megatron(self, name: str) -> Mapping:
        try:
            return self.by_megatron[name]
        except KeyError:
            raise KeyError(f"Megatron parameter {name!r} is not in the mapping table") from None

    def hf_names(self) -> set[str]:
        return set(self.by_hf)
