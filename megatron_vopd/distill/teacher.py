"""The teacher's weights. The teacher is the same model as the student, conditioned on the crop;
what differs between modes is only which weights it runs with (always forward-only, no gradient):

* ``current``: the student's own weights, as they are now (no copy). With a live same-weights
  teacher "answer the same thing for both views" is a zero-loss fixed point (VISION_OPD.md).
* ``ema`` (default, the reference's released setting): a copy initialised from the student and,
  after every optimiser step, moved toward it: theta_T <- (1 - rate) theta_T + rate theta_S.
* ``fixed``: a frozen copy of the starting weights.

The copy is built like the student (same TP/PP layout: ``build_copy`` builds this rank's stage),
so each rank updates exactly its own shards, and it is saved in checkpoints under ``teacher.``.

Precision: the teacher's forward runs in the model dtype, but an EMA teacher with bf16/fp16 weights
also keeps an **fp32 copy** of them (``ema32``) and lerps that one: at rate 0.05 and learning rates
of order 1e-6 a bf16 lerp rounds almost every update away (CPU_NOTES.md, "Mixed precision"). After
each update the copy is rounded into the forward weights. Checkpoints store the fp32 copy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MODES = ("current", "ema", "fixed")


class Teacher:
    def __init__(self, mode: str, student: torch.nn.Module, build_copy: Callable[[], torch.nn.Module] | None = None,
                 ema_rate: float = 0.05):
        if mode not in MODES:
            raise ValueError(f"distill.teacher={mode!r}: expected one of {', '.join(MODES)}")
        if mode != "current" and build_copy is None:
            raise ValueError(f"distill.teacher={mode!r} needs a copy of the model (build_copy)")
        if not 0.0 < ema_rate <= 1.0:
            raise ValueError(f"distill.ema_rate={ema_rate} must be in (0, 1]")
        self.mode, self.ema_rate = mode, ema_rate
        self.ema32: dict[str, torch.Tensor] | None = None  # fp32 copy of a half-precision EMA teacher
        if mode == "current":
            self.model = student
        else:
            self.model = build_copy()
            self.model.load_state_dict(student.state_dict())
            self.model.requires_grad_(False)
            self.model.eval()
            if mode == "ema" and any(p.dtype != torch.float32 for p in self.model.parameters()):
                self.ema32 = {n: p.detach().float().clone() for n, p in self.model.named_parameters()}

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
        if self.ema32 is None:
            torch._foreach_lerp_([t for (_, t), _ in pairs], [s.detach().to(t.dtype) for (_, t), (_, s) in pairs],
                                 self.ema_rate)
            return
        ema = [self.ema32[name] for (name, _), _ in pairs]
        torch._foreach_lerp_(ema, [s.detach().float() for _, (_, s) in pairs], self.ema_rate)
        torch._foreach_copy_([t for (_, t), _ in pairs], ema)  # round into the forward weights

    def state_dict(self) -> dict:
        """The copy's weights (the fp32 copy where the teacher keeps one); {} for ``current``."""
        if not self.is_copy:
            return {}
        return {**self.model.state_dict(), **(self.ema32 or {})}

    def load_state_dict(self, state: dict) -> None:
        """Weights of :meth:`state_dict` (any float dtype); the fp32 copy is set from them too."""
        if not self.is_copy:
            return
        self.model.load_state_dict(state)
        if self.ema32 is not None:
            with torch.no_grad():
                for name, t in self.ema32.items():
                    t.copy_(state[name])

    def sharded_state_dict(self, prefix: str) -> dict:
        """The copy for dist_checkpointing, keys prefixed with ``prefix``; tensors of the fp32 copy where
        the teacher keeps one (so it saves and restores exactly, into a run of any dtype)."""
        from megatron.core.dist_checkpointing.utils import add_prefix_for_sharding

        from megatron_vopd.bridge.megatron_ckpt import retarget

        sd = self.model.sharded_state_dict()
        add_prefix_for_sharding(sd, prefix)
        if self.ema32 is not None:
            sd = {k: retarget(v, data=self.ema32[k]) if k in self.ema32 else v for k, v in sd.items()}
        return sd
