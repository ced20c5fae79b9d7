"""Hugging Face ``config.json`` <-> our ``ModelConfig``, for every registered architecture.

The file's ``architectures`` pick the family (``megatron_vopd.architecture``); the family reads its
fields (``Architecture.model_config``) and writes them back (``Architecture.hf_config``).
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_vopd.architecture import architecture, architecture_for_hf
from megatron_vopd.config import ModelConfig


class HFConfigError(ValueError):
    pass


def get_key(d: dict, key: str, source: str, default=None, required=True):
    """``d[key]``; HFConfigError naming ``source`` and the key when it is missing and required."""
    if key in d:
        return d[key]
    if required and default is None:
        raise HFConfigError(f"{source}: missing key {key!r}")
    return default


def hf_params_dtype(raw: dict) -> str:
    """Our params_dtype for a config.json's ``dtype`` / ``torch_dtype`` (float32 unless half precision)."""
    return {"bfloat16": "bfloat16", "float16": "float16"}.get(raw.get("dtype") or raw.get("torch_dtype"), "float32")


def read_hf_config(hf_dir: str | Path) -> ModelConfig:
    """The ModelConfig of the checkpoint in ``hf_dir`` (its config.json)."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise HFConfigError(f"{path}: no config.json (is {hf_dir} a Hugging Face checkpoint folder?)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HFConfigError(f"{path}: not valid JSON ({e})") from None
    arch = architecture_for_hf(raw.get("architectures") or [raw.get("model_type", "?")], str(path))
    return arch.model_config(raw, str(path))


def hf_config(cfg: ModelConfig):
    """transformers' config object for ``cfg`` (``.save_pretrained(dir)`` writes config.json)."""
    return architecture(cfg.arch).hf_config(cfg)
