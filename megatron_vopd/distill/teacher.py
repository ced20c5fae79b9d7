"""The teacher's weights. The teacher is the same model as the student, conditioned on the crop;
what differs between modes is only which weights it runs with (always forward-only, no gradient):

* ``current``: the student's own weights, as they are now (no copy). With a live same-weights
  teacher "answer the same thing for both views" is a zero-loss fixed point (VISION_OPD.md).
* ``ema`` (default, the reference's released setting): a copy initialised from the student and,
  after every optimiser step, moved toward it: theta_T <- (1 - rate) theta_T + rate theta_S.
* ``fixed``: a frozen copy of the starting weights.

The copy is built like the student (same TP/PP layout: ``build_copy`` builds this rank's stage),
so each rank updates exactly its own shards, and it is saved in checkpoints under ``teacher.``.
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
        if mode == "current":
            self.model = student
        else:
            self.model = build_copy()
            self.model.load_state_dict(student.state_dict())
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def is_copy(self) -> bool:
        return self.mode != "current"

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        """Call after every optimiser step: moves an EMA teacher toward the student; else nothing."""
        if self.mode != "ema":
            return
        for (name, t), (sname, s) in zip(self.model.named_parameters(), student.named_parameters()):
            if name != sname or t.shape != s.shape:
                raise RuntimeError(f"teacher parameter {name} {tuple(t.shape)} does not match student {sname} {tuple(s.shape)}")
            t.lerp_(s.detach().to(t.dtype), self.ema_rate)

    def state_dict(self) -> dict:
        return self.model.state_dict() if self.is_copy else {}

    def load_state_dict(self, state: dict) -> None:
        if self.is_copy:
            self.model.load_state_dict(state)
