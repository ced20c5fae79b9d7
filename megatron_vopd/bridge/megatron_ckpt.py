"""Megatron distributed checkpoints of model weights (``megatron.core.dist_checkpointing``).

A checkpoint folder holds the sharded tensors (loadable at any TP x PP layout, each rank reading
only its shards) and ``vopd_model.yaml``, the ModelConfig it was made from. Writes are atomic: the
folder is written under a temporary name and renamed when complete (``write_atomically``, also used by
the training checkpoints of ``megatron_vopd.train.checkpoint``).
"""

from __future__ import annotations

import ctypes
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
import yaml

from megatron_vopd.config import ModelConfig, load_model_config, to_dict

MODEL_CONFIG = "vopd_model.yaml"
# A training run's checkpoints: <root>/iter_0000050/ (the step, 7 digits)
ITERATION = re.compile(r"iter_(\d{7})")


def iteration_name(step: int) -> str:
    return f"iter_{step:07d}"


def iteration_step(name: str) -> int | None:
    """The step in a folder name like ``iter_0000050`` (or one containing it), else None."""
    m = ITERATION.fullmatch(name) or ITERATION.search(name)
    return int(m.group(1)) if m else None


def iteration_folders(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``iter_XXXXXXX`` folder in ``root``, in step order."""
    return sorted((int(m.group(1)), d) for d in Path(root).iterdir() if d.is_dir() and (m := ITERATION.fullmatch(d.name)))


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

    def write(tmp: Path) -> None:
        dist_checkpointing.save(model.sharded_state_dict(), str(tmp))
        if dist.get_rank() == 0:
            write_model_config(tmp, model_cfg)
            for name, src in (extra_files or {}).items():
                dst = tmp / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)

    return write_atomically(out, write)


def write_atomically(out: Path, write: Callable[[Path], None]) -> Path:
    """Collective: ``write(tmp)`` on every rank into the empty folder ``<out>.tmp``, then (rank 0) move
    it to ``out``. An existing ``out`` stays whole until the new folder is complete."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    rank0 = dist.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    write(tmp)
    dist.barrier()
    if rank0:
        replace_dir(tmp, out)
    dist.barrier()
    return out


def replace_dir(src: Path, dst: Path) -> None:
    """Rename the folder ``src`` to ``dst``. An existing ``dst`` is swapped out in one atomic step
    (Linux renameat2 RENAME_EXCHANGE; elsewhere: two renames) and then removed."""
    if not dst.exists():
        src.rename(dst)
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.renameat2(-100, bytes(src), -100, bytes(dst), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
            raise OSError(ctypes.get_errno(), "renameat2")
    except (AttributeError, OSError):
        old = dst.with_name(dst.name + ".old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        src = old
    shutil.rmtree(src)


def write_model_config(folder: Path, model_cfg: ModelConfig) -> None:
    (Path(folder) / MODEL_CONFIG).write_text(yaml.safe_dump(to_dict(model_cfg), sort_keys=False))


def model_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder ``path`` names: itself, or a training run's latest (the one its ``latest``
    file names, else its last ``iter_*``)."""
    path = Path(path)
    if (path / MODEL_CONFIG).is_file():
        return path
    tracker = path / "latest"  # train.checkpoint's tracker file
    named = path / tracker.read_text().strip() if tracker.is_file() else None
    if named is not None and (named / MODEL_CONFIG).is_file():
        return named
    found = [d for _, d in iteration_folders(path) if (d / MODEL_CONFIG).is_file()] if path.is_dir() else []
    if not found:
        raise FileNotFoundError(f"{path}: neither a megatron-vopd checkpoint ({MODEL_CONFIG}) nor a training run "
                                "holding iter_* checkpoints")
    return found[-1]


def read_model_config(ckpt: str | Path) -> ModelConfig:
    path = Path(ckpt) / MODEL_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {ckpt} is not a megatron-vopd checkpoint")
    return load_model_config(str(path))


def require_dist_checkpoint(ckpt: str | Path) -> Path:
    ckpt = Path(ckpt)
    if not (ckpt / "metadata.json").is_file():
        raise FileNotFoundError(f"{ckpt}: not a Megatron distributed checkpoint (no metadata.json)")
    return ckpt


# A half-precision training run stores its fp32 master weights under this prefix + the weight's key.
MASTER_PREFIX = "optimizer.state.fp32_param."
# A training run with a teacher copy (distill.teacher ema or fixed) stores it under this prefix + the key.
TEACHER_PREFIX = "teacher."


def retarget(sh, *, key: str | None = None, data=None):
    """A copy of a sharded tensor (or factory) read from / written to another ``key`` or from / into
    another tensor ``data`` of the same shape (any dtype)."""
    import dataclasses

    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    changes = {} if key is None else {"key": key}
    if data is not None:
        changes["data"] = data
        if isinstance(sh, ShardedTensor):
            changes["dtype"] = data.dtype
    return dataclasses.replace(sh, **changes)


def reads(sh) -> tuple:
    """What a load-request entry reads: (key, global offset) of each tensor it builds (layers share a
    key and differ by offset); () for non-tensor entries."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    if isinstance(sh, ShardedTensorFactory):
        return tuple((t.key, t.global_offset) for t in nested_values(sh.build()))
    return ((sh.key, sh.global_offset),) if isinstance(sh, ShardedTensor) else ()


def weights_request(sharded: dict, stored_keys, shared_reads=()) -> dict:
    """The model's sharded state dict, each weight read from its fp32 master where the checkpoint holds
    one (a bf16/fp16 training run): exact weights for an fp32 model, the same rounding for a bf16 one.
    Entries whose master another request entry reads already (``shared_reads``: the optimizer's) get no
    fp32 buffer: the caller sets those weights from that entry."""
    import torch

    def from_master(v):
        moved = retarget(v, key=MASTER_PREFIX + v.key)
        if reads(moved) in shared_reads:
            return moved
        return retarget(moved, data=torch.empty_like(v.data, dtype=torch.float32))

    return {k: from_master(v) if MASTER_PREFIX + v.key in stored_keys else v for k, v in sharded.items()}


def teacher_request(sharded: dict, stored_keys, ckpt: Path) -> dict:
    """The model's sharded state dict read from a training checkpoint's teacher copy (``teacher.<key>``,
    in the dtype it was stored in: the EMA's fp32 copy where it kept one)."""
    import torch

    if not any(k.startswith(TEACHER_PREFIX) for k in stored_keys):
        raise KeyError(f"{ckpt}: holds no teacher copy (runs with distill.teacher=current, and crop_sft runs, "
                       "train one set of weights): export the student")

    def from_teacher(v):
        if getattr(v, "data", None) is None:  # a sharded object (layer extra state): only its key moves
            return retarget(v, key=TEACHER_PREFIX + v.key)
        dtype = getattr(stored_keys.get(TEACHER_PREFIX + v.key), "dtype", None) or v.data.dtype
        return retarget(v, key=TEACHER_PREFIX + v.key, data=torch.empty_like(v.data, dtype=dtype))

    return {k: from_teacher(v) for k, v in sharded.items()}


def load_model(model, ckpt: str | Path, *, weights: str = "student") -> None:
    """Collective: load the weights in ``ckpt`` into the model, whatever layout and dtype wrote them.
    ``ckpt`` may also be a training checkpoint (``megatron_vopd.train.checkpoint``): its weights are
    read from the fp32 masters when it holds them, its other contents are ignored; ``weights="teacher"``
    reads its EMA/fixed teacher copy instead (KeyError when it has none)."""
    from megatron.core import dist_checkpointing

    ckpt = require_dist_checkpoint(ckpt)
    sharded = model.sharded_state_dict()
    stored = dist_checkpointing.load_tensors_metadata(str(ckpt))
    if weights not in ("student", "teacher"):
        raise ValueError(f"weights={weights!r}: 'student' or 'teacher'")
    request = teacher_request(sharded, stored, ckpt) if weights == "teacher" else weights_request(sharded, stored)
    state = dist_checkpointing.load(request, str(ckpt), strict="assume_ok_unexpected")
    apply_model_state(model, {k: v for k, v in state.items() if k in sharded}, ckpt)


def apply_model_state(model, state: dict, ckpt: Path, what: str = "") -> None:
    """``model.load_state_dict`` of a loaded sharded state dict; KeyError naming ``ckpt`` on a mismatch."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise KeyError(f"{ckpt}: {what}missing {missing[:10]}, unexpected {unexpected[:10]}")
