"""Training checkpoints: weights, fp32 masters, optimizer, teacher, trainer state and RNG, resumable at
any TP x PP x DP, with or without the distributed optimizer, in bf16 or fp32.

Layout under the checkpoint root (``checkpoint.dir``)::

    latest                   text, e.g. "iter_0000004": the newest complete iteration folder
    iter_0000004/            one megatron.core.dist_checkpointing checkpoint, every tensor in MODEL space
                             (shaped like the full parameter, sharded by TP/PP like it):
      metadata.json, *.distcp  the weights in the run's dtype under the model's own sharded keys,
                               unprefixed (bridge.megatron_ckpt.load_model reads the folder as is);
                               "optimizer.state.fp32_param.<key>": the fp32 master weights (bf16/fp16 runs;
                               an fp32 run's weights are its masters);
                               "optimizer.state.<exp_avg|exp_avg_sq>.<key>": the Adam moments;
                               "teacher.<key>": the EMA/fixed teacher copy (the EMA's fp32 copy when it has one)
      common.pt                written by rank 0: the trainer's ``state`` dict and the optimizer's step
      vopd_model.yaml          the ModelConfig (bridge.megatron_ckpt.read_model_config)
      rng/rank_00000.pt        python, numpy, torch CPU/CUDA and Megatron tracker RNG of each global rank

Megatron's optimizers each name their state differently (``FP32Optimizer``, ``Float16OptimizerWith
Float16Params``, ``DistributedOptimizer`` in its ``fully_reshardable`` model-space form: masters as
``fp32_param`` or ``param``); the tensors are saved under the one set of keys above, so any of them
resumes from any other's checkpoint. Where a checkpoint has no masters (an fp32 run) a bf16 run takes
them from the stored fp32 weights; an fp32 run reads its weights from the stored masters. Both ways
are exact.

Atomicity: every rank writes into ``iter_XXXXXXX.tmp/``; once all are done rank 0 renames it to
``iter_XXXXXXX`` (a folder of the same step is swapped out atomically, megatron_ckpt.replace_dir), then
replaces ``latest`` (``latest.tmp`` + ``os.replace``), and only then removes iteration folders beyond
``keep_last`` and ``*.tmp`` leftovers. A crash at any point leaves ``latest`` naming a complete folder.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_vopd.bridge.megatron_ckpt import (MASTER_PREFIX, TEACHER_PREFIX, apply_model_state, iteration_folders, iteration_name,
                                                reads, require_dist_checkpoint, retarget, weights_request,
                                                write_atomically, write_model_config)

TRACKER = "latest"
_DIST_OPT_MASTER_PREFIX = "optimizer.state.param."  # the distributed optimizer's name for the masters
log = logging.getLogger(__name__)


def _leaves(tree, path=()):
    """(path, sharded tensor or factory) of every sharded leaf of a nested dict/list."""
    from megatron.core.dist_checkpointing.mapping import ShardedBase

    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        if isinstance(v, ShardedBase):
            yield path + (k,), v
        else:
            yield from _leaves(v, path + (k,))


def _unwrap_local(tree):
    """``tree`` with Megatron's LocalNonpersistentObject wrappers (values kept as they are on this rank,
    e.g. the parameter ids of the optimizer's groups) replaced by their values."""
    from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject

    if isinstance(tree, LocalNonpersistentObject):
        return tree.unwrap()
    if isinstance(tree, dict):
        return {k: _unwrap_local(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unwrap_local(v) for v in tree]
    return tree


def _put(tree, path, value) -> None:
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value


def _canonical(key: str) -> str:
    return MASTER_PREFIX + key[len(_DIST_OPT_MASTER_PREFIX):] if key.startswith(_DIST_OPT_MASTER_PREFIX) else key


def _inner(optimizer_state: dict) -> dict:
    """The inner (torch) optimizer's part of a Megatron optimizer state: ``param_groups`` (and ``state``)."""
    return optimizer_state.get("optimizer", optimizer_state)


def _saved_step(optimizer_state: dict) -> int | None:
    """The optimizer's step: FusedAdam keeps it in the parameter groups; torch's AdamW (megatron-core's
    fallback without TE/apex) per parameter, which Megatron collects as ``state.common_step``."""
    inner = _inner(optimizer_state)
    steps = {int(g["step"]) for g in inner["param_groups"] if "step" in g}
    common = inner.get("state", {}).get("common_step")
    if common is not None:
        steps.add(int(common))
    if len(steps) > 1:
        raise ValueError(f"the optimizer's step differs between parameter groups ({sorted(steps)}); "
                         "checkpoints keep one step for all")
    return steps.pop() if steps else None


def _restore_step(optimizer_state: dict, step: int | None, per_parameter: bool) -> None:
    inner = _inner(optimizer_state)
    if per_parameter:  # torch's AdamW
        inner.get("state", {}).pop("common_step", None)
        for state in inner.get("state", {}).values():
            if step is None:
                state.pop("step", None)
            else:
                state["step"] = torch.tensor(float(step))
        return
    for group in inner["param_groups"]:
        if step is None:
            group.pop("step", None)
        else:
            group["step"] = step


def _rng_state() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states({k: v.clone() for k, v in state["tracker"].items()})


def save_checkpoint(root, step: int, *, optimizer, model_cfg, state: dict, teacher=None,
                    keep_last: int | None = None) -> Path:
    """Collective: write ``root/iter_{step:07d}`` atomically, point ``root/latest`` at it, prune to keep_last.

    ``optimizer`` is the run's ``train.optim.StudentOptimizer`` (its ``model`` is saved), ``teacher`` a
    ``distill.teacher.Teacher`` holding a copy (None otherwise)."""
    from megatron.core import dist_checkpointing

    if keep_last is not None and keep_last < 1:
        raise ValueError(f"checkpoint.keep_last={keep_last} must be at least 1 (or None to keep all)")
    root, rank, rng = Path(root), dist.get_rank(), _rng_state()
    model_sd = optimizer.model.sharded_state_dict()
    opt_sd = optimizer.sharded_state_dict(model_sd)
    optimizer_step = _saved_step(opt_sd)
    tensors = {str(i): retarget(sh, key=_canonical(sh.key)) for i, (_, sh) in enumerate(_leaves(opt_sd))}
    sharded = {**model_sd, "optimizer": tensors, "train_state": state,
               "optimizer_state": {"step": optimizer_step, "grad_scaler": opt_sd.get("grad_scaler")}}
    if teacher is not None and teacher.is_copy:
        sharded["teacher"] = teacher.sharded_state_dict(TEACHER_PREFIX)

    def write(tmp: Path) -> None:
        dist_checkpointing.save(sharded, str(tmp))  # into an empty folder, else megatron warns
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save({**rng, "world_size": dist.get_world_size()}, tmp / "rng" / f"rank_{rank:05d}.pt")
        if rank == 0:
            write_model_config(tmp, model_cfg)

    out = write_atomically(root / iteration_name(step), write)
    if rank == 0:
        tracker_tmp = root / (TRACKER + ".tmp")
        with open(tracker_tmp, "w") as f:
            f.write(out.name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tracker_tmp, root / TRACKER)
        _prune(root, out, keep_last)
    dist.barrier()
    _set_rng_state(rng)  # saving draws no random numbers, whatever the libraries do meanwhile
    return out


def _prune(root: Path, current: Path, keep_last: int | None) -> None:
    for leftover in root.glob("iter_*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep_last is None:
        return
    others = [(step, d) for step, d in iteration_folders(root) if d != current]
    for _, old in others[:max(len(others) - (keep_last - 1), 0)]:
        shutil.rmtree(old)


def latest_checkpoint(root) -> Path | None:
    """The folder ``root/latest`` names; None when there is no tracker."""
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    path = Path(root) / tracker.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{tracker} names {path}, which does not exist")
    return path


def load_checkpoint(path, *, optimizer, teacher=None) -> dict:
    """Collective: restore weights, masters, optimizer state, teacher copy and this rank's RNG; returns
    the saved ``state``."""
    path = require_dist_checkpoint(path)
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    common = dist_checkpointing.load_common_state_dict(str(path))
    for key in ("train_state", "optimizer_state"):
        if key not in common:
            raise KeyError(f"{path}: no {key!r} in the checkpoint: a model-only checkpoint, not a training one "
                           "(start from it with checkpoint.load instead)")
    meta = dist_checkpointing.load_tensors_metadata(str(path))
    model = optimizer.model
    model_sd = model.sharded_state_dict()
    opt_sd = optimizer.sharded_state_dict(model.sharded_state_dict(), is_loading=True)
    saved = common["optimizer_state"]
    leaves, opt_request = [], {}
    for where, sh in _leaves(opt_sd):
        key = _canonical(sh.key)
        if key.startswith(MASTER_PREFIX) and key not in meta and key[len(MASTER_PREFIX):] in meta:
            key = key[len(MASTER_PREFIX):]  # an fp32 run's checkpoint: its weights are the masters
        elif saved["step"] is None and key not in meta and not key.startswith(MASTER_PREFIX):
            _put(opt_sd, where, sh.data)  # saved before the first step: no moments yet (they stay zero)
            continue
        opt_request[str(len(leaves))] = retarget(sh, key=key)
        leaves.append((where, sh))
    # one request per stored tensor: where the optimizer reads the tensor a weight would be read from
    # (an fp32 checkpoint's weights as a bf16 run's masters), the weight is set from the optimizer's copy
    opt_reads = {reads(sh): i for i, sh in opt_request.items()}
    weights = weights_request(model_sd, meta, shared_reads=opt_reads)
    shared = {k: opt_reads[r] for k, v in weights.items() if (r := reads(v)) and r in opt_reads}
    request = {**{k: v for k, v in weights.items() if k not in shared}, "optimizer": opt_request}
    if teacher is not None and teacher.is_copy:
        request["teacher"] = teacher.sharded_state_dict(TEACHER_PREFIX)
    absent = sorted({k for sh in nested_values(request) for k, _ in reads(sh) if k not in meta})
    if absent:
        raise KeyError(f"{path}: {len(absent)} tensors not in the checkpoint: {', '.join(absent[:5])}"
                       + (" ..." if len(absent) > 5 else ""))
    try:
        loaded = dist_checkpointing.load(request, str(path), strict="assume_ok_unexpected")
    except CheckpointingException as e:
        raise KeyError(f"{path}: {e}") from e

    apply_model_state(model, {**{k: v for k, v in loaded.items() if k in model_sd},
                              **{k: loaded["optimizer"][i] for k, i in shared.items()}}, path)
    if teacher is not None and teacher.is_copy:
        teacher.load_state_dict(loaded["teacher"])
    for i, (where, _) in enumerate(leaves):
        _put(opt_sd, where, loaded["optimizer"][str(i)])
    opt_sd = _unwrap_local(opt_sd)
    _restore_step(opt_sd, saved["step"], optimizer.per_parameter_step)
    if saved.get("grad_scaler") is not None and "grad_scaler" in opt_sd:
        opt_sd["grad_scaler"] = saved["grad_scaler"]
    optimizer.load_state_dict(opt_sd)
    _load_rng(path)
    return loaded["train_state"]


def _load_rng(path: Path) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    saved_world = len(list((path / "rng").glob("rank_*.pt")))
    if saved_world != world:
        log.warning("%s: RNG states of %d ranks saved, this run has %d: the layout changed, RNG not restored",
                    path, saved_world, world)
        return
    file = path / "rng" / f"rank_{rank:05d}.pt"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing RNG state of rank {rank}")
    _set_rng_state(torch.load(file, weights_only=False))
