"""The checks of a training run that read the file system, run before any process, engine or download
starts (``vopd train``, and the trainer's entry point in every process before its process group): the data
files exist, and a ``checkpoint.load`` checkpoint exists and holds the model the recipe describes.

    errors = preflight(cfg)        # [] or messages, each naming its key and path
"""

from __future__ import annotations

from pathlib import Path

from megatron_vopd.config import VopdConfig, to_dict

# ModelConfig fields that do not change the weights' shapes or meaning: a checkpoint may differ in them
RUNTIME_FIELDS = frozenset({"params_dtype", "transformer_impl", "fp8", "fp8_recipe", "recompute",
                            "max_position_embeddings"})


def _file(key: str, value: str | None, errors: list[str]) -> None:
    if value is None:
        return
    path = Path(value)
    if path.is_dir():
        errors.append(f"{key}={value} is a directory, not a data file")
    elif not path.is_file():
        errors.append(f"{key}={value}: no such file")


def _checkpoint_model(load: str):
    """The ModelConfig of the checkpoint ``load`` names (a checkpoint, or a run's latest), or a message."""
    from megatron_vopd.bridge.megatron_ckpt import MODEL_CONFIG, read_model_config
    from megatron_vopd.train.checkpoint import latest_checkpoint

    root = Path(load)
    if not root.is_dir():
        return None, f"checkpoint.load={load}: no such checkpoint directory"
    try:
        source = latest_checkpoint(root) or root
    except FileNotFoundError as e:
        return None, f"checkpoint.load={load}: {e}"
    if not (source / MODEL_CONFIG).is_file():
        return None, (f"checkpoint.load={load}: {source} has no {MODEL_CONFIG}: not a megatron-vopd checkpoint "
                      "(convert a Hugging Face folder with `vopd convert hf-to-megatron`)")
    return read_model_config(source), str(source)


def model_differences(want, have) -> list[str]:
    """``key: recipe value != checkpoint value`` for every weight-shaping field that differs."""
    a, b = to_dict(want), to_dict(have)
    out = []
    for key in sorted(set(a) | set(b)):
        if key in RUNTIME_FIELDS or a.get(key) == b.get(key):
            continue
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out += [f"model.{key}.{k}: {a[key].get(k)!r} != {b[key].get(k)!r}"
                    for k in sorted(set(a[key]) | set(b[key])) if a[key].get(k) != b[key].get(k)]
        else:
            out.append(f"model.{key}: {a.get(key)!r} != {b.get(key)!r}")
    return out


def preflight(cfg: VopdConfig) -> list[str]:
    """Every problem with the run's files, each naming its key (empty: none)."""
    errors: list[str] = []
    d = cfg.data
    if d.train_file is None:
        errors.append("data.train_file is not set: the training parquet/jsonl (vopd data prepare)")
    _file("data.train_file", d.train_file, errors)
    _file("data.eval_file", d.eval_file, errors)
    if cfg.checkpoint.load:
        have, where = _checkpoint_model(cfg.checkpoint.load)
        if have is None:
            errors.append(where)
        else:
            diffs = model_differences(cfg.model, have)
            if diffs:
                errors.append(f"checkpoint.load={cfg.checkpoint.load}: the recipe's model differs from the checkpoint's "
                              f"({where}/vopd_model.yaml; recipe != checkpoint): " + "; ".join(diffs))
    return errors
