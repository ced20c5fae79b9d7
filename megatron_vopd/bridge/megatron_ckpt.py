"""Megatron distributed checkpoints of model weights (``megatron.core.dist_checkpointing``).

A checkpoint folder holds the sharded tensors (loadable at any TP x PP layout, each rank reading
only its shards) and ``vopd_model.yaml``, the ModelConfig it was made from. Writes are atomic: the
folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch.distributed as dist
import yaml

from megatron_vopd.config import ModelConfig, load_model_config, to_dict

MODEL_CONFIG = "vopd_model.yaml"


class CheckpointExistsError(FileExistsError):
    pass


def holds_checkpoint(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def prepare_output_dir(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if holds_checkpoint(out) and not overwrite:
        raise CheckpointExistsError(f"{out} already holds files; pass --overwrite to replace them")
    return out


def save_model(model, out: str | Path, model_cfg: ModelConfig, *, overwrite: bool = False, extra_files: dict | None = None) -> Path:
    """Collective: write the model's weights to ``out`` atomically (temp folder, then rename)."""
    from megatron.core import dist_checkpointing

    out = prepare_output_dir(out, overwrite)
    tmp = out.with_name(out.name + ".tmp")
    rank0 = dist.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(tmp))
    if rank0:
        (tmp / MODEL_CONFIG).write_text(yaml.safe_dump(to_dict(model_cfg), sort_keys=False))
        for name, src in (extra_files or {}).items():
            dst = tmp / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    dist.barrier()
    return out


def read_model_config(ckpt: str | Path) -> ModelConfig:
    path = Path(ckpt) / MODEL_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {ckpt} is not a megatron-vopd checkpoint")
    return load_model_config(str(path))


def load_model(model, ckpt: str | Path) -> None:
    """Collective: load the weights in ``ckpt`` into the model, whatever layout wrote them."""
    from megatron.core import dist_checkpointing

    ckpt = Path(ckpt)
    if not (ckpt / "metadata.json").is_file():
        raise FileNotFoundError(f"{ckpt}: not a Megatron distributed checkpoint (no metadata.json)")
    state = dist_checkpointing.load(model.sharded_state_dict(), str(ckpt))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise KeyError(f"{ckpt}: missing {missing[:10]}, unexpected {unexpected[:10]}")
