"""Training metrics: a console line, JSONL, TensorBoard and (optionally) Weights & Biases.

Metric names the trainer passes (any subset; values are floats, tensors or numpy scalars):

- ``loss``            distillation loss, token mean
- ``loss/anchor``     crop-anchor loss
- ``tokens_per_s``    response tokens trained per second of the whole step
- ``time/rollout``, ``time/sync``, ``time/teacher``, ``time/student``, ``time/optimizer``,
  ``time/step``       wall seconds of each phase and of the whole step
- ``lr``              learning rate
- ``grad_norm``       gradient norm (before clipping)
- ``response_len``    mean number of sampled response tokens
- ``agreement``       teacher-student argmax agreement on response tokens
- ``answer_entropy``  entropy (nats) of the distribution of parsed answers across samples
- anything else (e.g. ``eval/full_acc``): logged as is, appended to the console line as ``key value``.

Only the logging rank builds an enabled logger; elsewhere ``enabled=False`` makes every method a no-op.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from megatron_vopd.config import LoggingConfig

# (metric key, console label, format) in console order; groups are separated by " | ".
_GROUPS: list[list[tuple[str, str, str]]] = [
    [("loss", "loss", "{:.4f}")],
    [("loss/anchor", "anchor", "{:.4f}")],
    [("tokens_per_s", "", "{:.0f} tok/s")],
    [
        ("time/rollout", "rollout", "{:.2f}s"),
        ("time/sync", "sync", "{:.2f}s"),
        ("time/teacher", "teacher", "{:.2f}s"),
        ("time/student", "student", "{:.2f}s"),
        ("time/optimizer", "optim", "{:.2f}s"),
        ("time/step", "step", "{:.2f}s"),
    ],
    [("lr", "lr", "{:.1e}")],
    [("grad_norm", "gnorm", "{:.2f}")],
    [("response_len", "len", "{:.0f}")],
    [("agreement", "agree", "{:.2f}")],
    [("answer_entropy", "ans-H", "{:.2f}")],
]
_KNOWN = {key for group in _GROUPS for key, _, _ in group}


def _to_float(value) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


def progress_line(step: int, total_steps: int, metrics: dict[str, float]) -> str:
    """One fixed-format console line; keys missing from `metrics` are omitted, unknown ones appended."""
    width = max(4, len(str(total_steps)))
    parts = [f"step {step:>{width}}/{total_steps}"]
    for group in _GROUPS:
        items = []
        for key, label, fmt in group:
            if key in metrics:
                text = fmt.format(_to_float(metrics[key]))
                items.append(f"{label} {text}" if label else text)
        if items:
            parts.append(" ".join(items))
    extras = [f"{k} {_to_float(v):.4g}" for k, v in metrics.items() if k not in _KNOWN]
    if extras:
        parts.append(" ".join(extras))
    return " | ".join(parts)


def _truncate_jsonl(path: str, resume_step: int) -> None:
    """Drop lines with step > resume_step (and unreadable ones); rewrite atomically."""
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if int(json.loads(line)["step"]) <= resume_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class MetricsLogger:
    """Writes metrics every `cfg.log_interval` steps (and at the last step) to the configured sinks."""

    def __init__(self, cfg: LoggingConfig, *, total_steps: int, enabled: bool = True,
                 run_config: dict | None = None, resume_step: int = 0, root: str | None = None):
        """``root`` (checkpoint.dir): where relative ``jsonl_path`` / ``tensorboard_dir`` lie."""
        if root is not None:
            under = lambda p: p if p is None or os.path.isabs(p) else os.path.join(root, p)  # noqa: E731
            cfg = dataclasses.replace(cfg, jsonl_path=under(cfg.jsonl_path), tensorboard_dir=under(cfg.tensorboard_dir))
        self.cfg, self.total_steps, self.enabled = cfg, total_steps, enabled
        self._jsonl = self._tb = self._wandb = None
        if not enabled:
            return
        if cfg.wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise RuntimeError(
                    f"logging.wandb_project={cfg.wandb_project!r} is set but wandb is not installed: "
                    "pip install 'megatron-vopd[wandb]' (or unset logging.wandb_project)"
                ) from e
            self._wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name,
                                     config=run_config, resume="allow")
        if cfg.jsonl_path:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.jsonl_path)), exist_ok=True)
            if resume_step > 0 and os.path.exists(cfg.jsonl_path):
                _truncate_jsonl(cfg.jsonl_path, resume_step)
            self._jsonl = open(cfg.jsonl_path, "a", encoding="utf-8")
        if cfg.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(cfg.tensorboard_dir, purge_step=resume_step + 1 if resume_step > 0 else None)
            if run_config is not None:
                text = json.dumps(run_config, indent=2, sort_keys=True, default=str)
                self._tb.add_text("run_config", "```\n" + text + "\n```", resume_step)

    def should_log(self, step: int) -> bool:
        return self.enabled and (step % max(1, self.cfg.log_interval) == 0 or step == self.total_steps)

    def log(self, step: int, metrics: dict[str, float]) -> str | None:
        """Write `metrics` of `step` to every sink and print the console line; None when not logged."""
        if not self.should_log(step):
            return None
        values = {k: _to_float(v) for k, v in metrics.items()}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)
        line = progress_line(step, self.total_steps, values)
        print(line, flush=True)
        return line

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl = self._tb = self._wandb = None
