"""Training checkpoints: weights, teacher copy, optimizer, trainer state and RNG, resumable at any TP x PP.

Layout under the checkpoint root (``checkpoint.dir``)::

    latest                   text, e.g. "iter_0000004": the newest complete iteration folder
    iter_0000004/            one megatron.core.dist_checkpointing checkpoint:
      metadata.json, *.distcp  sharded tensors: the weights under the model's own sharded keys,
                               unprefixed (bridge.megatron_ckpt.load_model reads the folder as is);
                               "teacher.<key>": the EMA/fixed teacher copy;
                               "optimizer.state.<exp_avg|exp_avg_sq>.<key>": sharded like the parameter
      common.pt                written by rank 0: the trainer's ``state`` dict, the optimizer's
                               param_groups hyperparameters and its step (one for all parameters)
      vopd_model.yaml          the ModelConfig (bridge.megatron_ckpt.read_model_config)
      rng/rank_00000.pt        python, numpy, torch CPU/CUDA and Megatron tracker RNG of each global rank

Atomicity: every rank writes into ``iter_XXXXXXX.tmp/``; once all are done rank 0 renames it to
``iter_XXXXXXX`` (a folder of the same step is swapped out atomically, megatron_ckpt.replace_dir), then
replaces ``latest`` (``latest.tmp`` + ``os.replace``), and only then removes iteration folders beyond
``keep_last`` and ``*.tmp`` leftovers. A crash at any point leaves ``latest`` naming a complete folder.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_vopd.bridge.megatron_ckpt import apply_model_state, require_dist_checkpoint, write_atomically, write_model_config

TRACKER = "latest"
TEACHER_PREFIX = "teacher."
OPTIM_PREFIX = "optimizer.state."
_ITER = re.compile(r"iter_(\d{7})")
log = logging.getLogger(__name__)


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def _sharded(model, prefix: str = "") -> dict:
    from megatron.core.dist_checkpointing.utils import add_prefix_for_sharding

    sd = model.sharded_state_dict()
    if prefix:
        add_prefix_for_sharding(sd, prefix)
    return sd


def _param_map(model_sd: dict, optimizer) -> tuple[list, dict]:
    """The optimizer's parameters (in state_dict order) and, per index, the model's sharded tensor."""
    from megatron.core.dist_checkpointing.optimizer import get_param_id_to_sharded_param_map

    params = [p for g in optimizer.param_groups for p in g["params"]]
    id_map = get_param_id_to_sharded_param_map(model_sd, params)
    if len(id_map) != len(params):
        raise ValueError(f"the optimizer holds {len(params)} parameters, {len(params) - len(id_map)} of them "
                         "not the model's: checkpoints support an optimizer over the model's local parameters")
    return params, id_map


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


def save_checkpoint(root, step: int, *, model, optimizer: torch.optim.Optimizer, model_cfg, state: dict,
                    teacher_model=None, keep_last: int | None = None) -> Path:
    """Collective: write ``root/iter_{step:07d}`` atomically, point ``root/latest`` at it, prune to keep_last."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.optimizer import optim_state_to_sharding_state

    if keep_last is not None and keep_last < 1:
        raise ValueError(f"checkpoint.keep_last={keep_last} must be at least 1 (or None to keep all)")
    root, rank, rng = Path(root), dist.get_rank(), _rng_state()
    model_sd = _sharded(model)
    _, id_map = _param_map(model_sd, optimizer)
    opt = optimizer.state_dict()
    steps = [s["step"] for s in opt["state"].values() if "step" in s]
    if len({float(s) for s in steps}) > 1:
        raise ValueError("the optimizer's step differs between parameters; checkpoints keep one step for all")
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]
    optim_state_to_sharding_state(opt, id_map, exclude_keys=("step",))
    opt["param_groups"], opt["step"] = groups, (steps[0].clone() if steps else None)
    sharded = {**model_sd, "optimizer": opt, "train_state": state}
    if teacher_model is not None:
        sharded["teacher"] = _sharded(teacher_model, TEACHER_PREFIX)

    def write(tmp: Path) -> None:
        dist_checkpointing.save(sharded, str(tmp))  # into an empty folder, else megatron warns
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save({**rng, "world_size": dist.get_world_size()}, tmp / "rng" / f"rank_{rank:05d}.pt")
        if rank == 0:
            write_model_config(tmp, model_cfg)

    out = write_atomically(root / iter_name(step), write)
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
    others = sorted((int(m.group(1)), d) for d in root.iterdir()
                    if d.is_dir() and d != current and (m := _ITER.fullmatch(d.name)))
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


def _keys(sh) -> list[str]:
    """The checkpoint keys a sharded tensor (or factory) of a request reads."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    if isinstance(sh, ShardedTensorFactory):
        return [t.key for t in nested_values(sh.build())]
    return [sh.key] if isinstance(sh, ShardedTensor) else []


def load_checkpoint(path, *, model, optimizer, teacher_model=None) -> dict:
    """Collective: restore weights, teacher copy, optimizer and this rank's RNG; returns the saved ``state``."""
    path = require_dist_checkpoint(path)
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.optimizer import make_sharded_optimizer_tensor

    common = dist_checkpointing.load_common_state_dict(str(path))
    for key in ("train_state", "optimizer"):
        if key not in common:
            raise KeyError(f"{path}: no {key!r} in the checkpoint: a model-only checkpoint, not a training one")
    groups = optimizer.state_dict()["param_groups"]
    if len(groups) != len(common["optimizer"]["param_groups"]):
        raise ValueError(f"{path}: optimizer.param_groups: the checkpoint has {len(common['optimizer']['param_groups'])}"
                         f" parameter groups, the optimizer {len(groups)}")
    meta = dist_checkpointing.load_tensors_metadata(str(path))
    state_keys = sorted({k[len(OPTIM_PREFIX):].split(".", 1)[0] for k in meta if k.startswith(OPTIM_PREFIX)})
    model_sd = _sharded(model)
    params, id_map = _param_map(model_sd, optimizer)
    opt_sd = {}
    for i, sh in id_map.items():
        for name in state_keys:
            t = make_sharded_optimizer_tensor(sh, torch.empty_like(params[i].detach()), prefix=OPTIM_PREFIX + name)
            if all(k in meta for k in _keys(t)):
                opt_sd.setdefault(i, {})[name] = t
    if opt_sd and common["optimizer"].get("step") is None:
        raise KeyError(f"{path}: optimizer.step missing from the common state")
    request = {**model_sd, "optimizer": {"state": opt_sd}}
    if teacher_model is not None:
        request["teacher"] = _sharded(teacher_model, TEACHER_PREFIX)
    absent = sorted(k for sh in nested_values(request) for k in _keys(sh) if k not in meta)
    if absent:
        raise KeyError(f"{path}: {len(absent)} tensors not in the checkpoint: {', '.join(absent[:5])}"
                       + (" ..." if len(absent) > 5 else ""))
    try:
        loaded = dist_checkpointing.load(request, str(path), strict="raise_unexpected")
    except CheckpointingException as e:
        raise KeyError(f"{path}: {e}") from e

    apply_model_state(model, {k: v for k, v in loaded.items() if k in model_sd}, path)
    if teacher_model is not None:
        apply_model_state(teacher_model, loaded["teacher"], path, "teacher: ")
    saved = loaded["optimizer"]
    optimizer.load_state_dict({
        "state": {i: {"step": saved["step"].clone(), **{n: saved["state"][i][n] for n in parts}}
                  for i, parts in opt_sd.items()},
        "param_groups": [{**hp, "params": g["params"]} for hp, g in zip(saved["param_groups"], groups)],
    })
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
