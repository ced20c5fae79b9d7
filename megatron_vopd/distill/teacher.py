"""The teacher's weights. The teacher is the same model as the student, conditioned on the crop;
what differs between modes is only which weights it runs with (always forward-only, no gradient):

* ``current``: the student's own weights, as they are now (no copy). With a live same-weights
  teacher "answer the same thing for both views" is a zero-loss fixed point (docs/method.md).
* ``ema`` (default, the reference's released setting): a copy initialised from the student and,
  after every optimiser step, moved toward it: theta_T <- (1 - rate) theta_T + rate theta_S.
* ``fixed``: a frozen copy of the starting weights.

The copy is built like the student (same TP/PP layout: ``build_copy`` builds this rank's stage),
so each rank updates exactly its own shards, and it is saved in checkpoints under ``teacher.``.

Precision: the teacher's forward runs in the model dtype, but an EMA teacher with bf16/fp16 weights
also keeps an **fp32 copy** of them (``fp32``) and lerps that one: at rate 0.05 and learning rates
of order 1e-6 a bf16 lerp rounds almost every update away (an update below half a bf16 spacing is lost). After
each update the copy is rounded into the forward weights. The copy is sharded over the data-parallel
``group`` (``distill/fp32_copy.py``: 4 bytes per parameter / DP). Checkpoints store the whole fp32 copy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from megatron_vopd.distill.fp32_copy import ShardedFP32Copy

MODES = ("current", "ema", "fixed")


class Teacher:
    def __init__(self, mode: str, student: torch.nn.Module, build_copy: Callable[[], torch.nn.Module] | None = None,
                 ema_rate: float = 0.05, group=None):
        if mode not in MODES:
            raise ValueError(f"distill.teacher={mode!r}: expected one of {', '.join(MODES)}")
        if mode != "current" and build_copy is None:
            raise ValueError(f"distill.teacher={mode!r} needs a copy of the model (build_copy)")
        if not 0.0 < ema_rate <= 1.0:
            raise ValueError(f"distill.ema_rate={ema_rate} must be in (0, 1]")
        self.mode, self.ema_rate = mode, ema_rate
        self.fp32: ShardedFP32Copy | None = None  # fp32 copy of a half-precision EMA teacher
        if mode == "current":
            self.model = student
        else:
            self.model = build_copy()
            self.model.load_state_dict(student.state_dict())
            self.model.requires_grad_(False)
            self.model.eval()
            if mode == "ema" and any(p.dtype != torch.float32 for p in self.model.parameters()):
                self.fp32 = ShardedFP32Copy(list(self.model.named_parameters()), group)

    @property
    def is_copy(self) -> bool:
        return self.mode != "current"

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        """Call after every optimiser step: moves an EMA teacher toward the student; else nothing."""
        if self.mode != "ema":
            return
        pairs = list(zip(self.model.named_parameters(), student.named_parameters()))
        for (name, t), (sname, s) in pairs:
            if name != sname or t.shape != s.shape:
                raise RuntimeError(f"teacher parameter {name} {tuple(t.shape)} does not match student {sname} {tuple(s.shape)}")
        if self.fp32 is None:
            torch._foreach_lerp_([t for (_, t), _ in pairs], [s.detach().to(t.dtype) for (_, t), (_, s) in pairs],
                                 self.ema_rate)
        else:  # in fp32, rounded into the forward weights
            self.fp32.lerp_([s for _, (_, s) in pairs], self.ema_rate)

    def state_dict(self) -> dict:
        """The copy's weights (the whole fp32 copy where the teacher keeps one; collective over its group);
        {} for ``current``."""
        if not self.is_copy:
            return {}
        return {**self.model.state_dict(), **(self.fp32.full() if self.fp32 is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        """Weights of :meth:`state_dict` (any float dtype); the fp32 copy is set from them too."""
        if not self.is_copy:
            return
        self.model.load_state_dict(state)
        if self.fp32 is not None:
            self.fp32.load_full(state)

    def sharded_state_dict(self, prefix: str) -> dict:
        """The copy for dist_checkpointing, keys prefixed with ``prefix``; tensors of the whole fp32 copy
        where the teacher keeps one (so it saves and restores exactly, into a run of any dtype and DP size;
        collective over its group)."""
        from megatron.core.dist_checkpointing.utils import add_prefix_for_sharding

        from megatron_vopd.bridge.megatron_ckpt import retarget

        sd = self.model.sharded_state_dict()
        add_prefix_for_sharding(sd, prefix)
        if self.fp32 is not None:
            full = self.fp32.full()
            sd = {k: retarget(v, data=full[k]) if k in full else v for k, v in sd.items()}
        return sd
