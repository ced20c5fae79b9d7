"""The training loop, top to bottom. Run it under torchrun (any TP x PP x DP):

    torchrun --nproc-per-node N -m megatron_vopd.train.trainer configs/demo.yaml [key.sub=value ...]

One step::

    prompts  = next(loader)                                  # both views of prompts_per_step prompts
    resps    = objective.responses(prompts, rollout)         # vision_opd: every engine samples its block
    mbs      = micro_batches(full | crop sequences)          # this data-parallel rank's prompts
    metrics  = objective.gradient(student, teacher, mbs)     # vision_opd: teacher fwd, student fwd/bwd, anchor
    fp32 grads summed over data parallelism (Megatron DDP), clipped; AdamW step on the fp32 masters at
    lr_at(step), rounded into the model (Megatron's optimizer, train/optim.py); EMA teacher update (fp32)
    sync_weights(engine, model)                              # when the objective samples: every engine follows
    log; every checkpoint.save_interval steps (and at the end): checkpoint

The objective (``train/objectives.py``) is ``vision_opd`` or the demo's labelled warm-up ``crop_sft`` (no
rollouts, no teacher). The model family comes from ``model.arch`` (``megatron_vopd.architecture``).

Engines (``rollout/layout.py``): one vLLM engine per rollout group of ``rollout.tensor_parallel_size``
ranks, so every GPU holds one; the step's prompts are split over them in blocks, each request seeded by
the step and its prompt (the samples do not depend on the layout), and the samples are all-gathered.
Each rank's engine is synced from its own model-parallel group's export after every step; with
``rollout.sleep`` the engines sleep while training runs. With ``data.eval_file`` an objective that
samples evaluates full-image vs crop accuracy through the engines (questions split over them) before the
first step, every ``eval_interval`` steps and after the last (``eval.json`` / ``eval.png`` beside the
checkpoints).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

from megatron_vopd.architecture import architecture
from megatron_vopd.bridge.megatron_ckpt import load_model
from megatron_vopd.config import ConfigError, VopdConfig, load_config, to_dict, validate
from megatron_vopd.data.loader import PromptLoader, load_records
from megatron_vopd.data.tokenizer import load_tokenizer
from megatron_vopd.distill.teacher import Teacher
from megatron_vopd.eval.accuracy import eval_items, evaluate
from megatron_vopd.eval.plot import plot_accuracy
from megatron_vopd.rollout.engine import RolloutRequest, SamplingSpec
from megatron_vopd.rollout.factory import start_engine
from megatron_vopd.rollout.layout import generate_split, request_seed
from megatron_vopd.rollout.weight_sync import sync_weights
from megatron_vopd.runtime import init_distributed, log_rank0
from megatron_vopd.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from megatron_vopd.train.metrics import MetricsLogger
from megatron_vopd.train.objectives import build_objective
from megatron_vopd.train.optim import build_optimizer
from megatron_vopd.train.preflight import preflight
from megatron_vopd.train.sequences import micro_batches, share_of_prompts, view_sequences

_log = log_rank0


class Trainer:
    def __init__(self, cfg: VopdConfig):
        from megatron.core import parallel_state as ps

        p = cfg.parallel
        self.info = init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, seed=cfg.seed,
                                     timeout_s=3600)
        validate(cfg, world_size=self.info.world_size)
        self.cfg, self.rank0 = cfg, self.info.rank == 0
        self.arch = architecture(cfg.model.arch)
        self.dp_group = ps.get_data_parallel_group() if self.info.dp_size > 1 else None
        self.model = self.arch.build_model(cfg.model, p)
        self.step, self.start_step = 0, 0
        ck = cfg.checkpoint
        latest = latest_checkpoint(ck.dir) if ck.resume else None
        if latest is None and ck.load:  # a model checkpoint, or a training run (its latest checkpoint)
            source = latest_checkpoint(ck.load) or ck.load
            _log(f"[train] initial weights from {source}")
            load_model(self.model, source)
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        self.objective = build_objective(cfg, self.tokenizer)
        self.teacher = Teacher(self.objective.teacher_mode, self.model,
                               lambda: self.arch.build_model(cfg.model, p, init_weights=False), cfg.distill.ema_rate,
                               group=self.dp_group)  # the fp32 EMA copy of a bf16 teacher is sharded over DP
        self.optimizer = build_optimizer(self.model, cfg.optimizer, cfg.model)
        chosen = self.optimizer.description
        _log(f"[train] {cfg.model.params_dtype} parameters; {chosen['optimizer']} ({chosen['adam']}), master weights: "
             f"{chosen['masters']}; {chosen['ddp']}")
        self.loader = PromptLoader.from_config(cfg, tokenizer=self.tokenizer)
        if latest is not None:
            _log(f"[train] resuming from {latest}")
            state = load_checkpoint(latest, optimizer=self.optimizer, teacher=self.teacher)
            self.step = self.start_step = int(state["step"])
            self.loader.load_state_dict(state["data"])
        self.engine = self.layout = None
        self.eval_rows: list[dict] = json.loads(self._eval_path().read_text()) if latest and self._eval_path().exists() else []

    # ------------------------------------------------------------------ rollout engine

    def _eval_path(self) -> Path:
        return Path(self.cfg.checkpoint.dir) / "eval.json"

    def start_engine(self) -> None:
        """Export the policy as it is now and start every rank's engine from it; version 0 = now."""
        t0 = time.perf_counter()
        d = self.cfg.data
        self.engine, self.layout = start_engine(self.model, self.cfg.model, self.cfg.rollout,
                                                Path(self.cfg.checkpoint.dir) / "engine",
                                                min_pixels=d.min_pixels, max_pixels=d.max_pixels)
        _log(f"[train] rollout engines started from the step-{self.step} weights ({time.perf_counter() - t0:.0f}s)")

    @property
    def version(self) -> int:
        """The policy's weight version: the optimiser steps of this run (the engine started at 0)."""
        return self.step - self.start_step

    def rollout(self, prompts) -> list:
        """The engines' samples of the full-image prompts (each engine its block; every rank gets all)."""
        r = self.cfg.rollout
        requests = [RolloutRequest([int(t) for t in p.prompt_ids], [p.full_image],
                                   seed=request_seed(r.seed, self.step, i, r.n_samples)) for i, p in enumerate(prompts)]
        spec = SamplingSpec(n=r.n_samples, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens)
        return generate_split(self.engine, self.layout, requests, spec, weight_version=self.version)

    # ------------------------------------------------------------------ one step

    def micro_batches(self, prompts, resps) -> tuple[dict, int]:
        """This data-parallel rank's micro-batches of both views, and the step's response tokens."""
        m = self.cfg.model
        views = {v: view_sequences(prompts, resps, v) for v in ("full", "crop")}
        total_tokens = sum(len(r.token_ids) for r in resps)
        share = share_of_prompts(resps, self.info.dp_rank, self.info.dp_size)
        mine = {v: [seqs[i] for i in share] for v, seqs in views.items()}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        position_ids = lambda ids, grid, mask: self.arch.position_ids(m, ids, grid, mask)  # noqa: E731
        return micro_batches(mine, budget=self.cfg.optimizer.micro_batch_tokens, pad_id=pad,
                             position_ids=position_ids), total_tokens

    def train_step(self, batch) -> dict:
        t = time.perf_counter()
        self.optimizer.zero_grad()
        resps, metrics = self.objective.responses(batch.prompts, self.rollout)
        times = {"rollout": metrics.pop("time/rollout")} if "time/rollout" in metrics else {}
        if self.engine is not None:
            self.engine.sleep()  # rollout.sleep: the engine's GPU memory is free while training runs
        mbs, total_tokens = self.micro_batches(batch.prompts, resps)
        if times:
            t = time.perf_counter()
        metrics.update(self.objective.gradient(self.optimizer.ddp, self.teacher.model, mbs,  # Megatron DDP: fp32 grads
                                               total_tokens=total_tokens, dp_group=self.dp_group))
        teacher_s = metrics.pop("time/teacher", None)  # this rank's teacher forward passes
        if teacher_s is not None:
            times["teacher"] = teacher_s
        times["student"] = time.perf_counter() - t - (teacher_s or 0.0)  # student (+ crop anchor) fwd/bwd
        t = time.perf_counter()
        metrics.update(self.optimizer_step())
        times["optimizer"] = time.perf_counter() - t
        self.step += 1
        if self.objective.needs_engine:  # every engine follows the policy (collective: each rank feeds its engine)
            t = time.perf_counter()
            self.engine.wake_up(["weights"])
            sync_weights(self.engine, self.model, self.cfg.model, version=self.version,
                         bucket_bytes=self.cfg.rollout.weight_sync_bucket_bytes, dtype=self.cfg.rollout.dtype)
            self.engine.wake_up(["kv_cache"])
            times["sync"] = time.perf_counter() - t
        metrics.update({f"time/{k}": v for k, v in times.items()})
        metrics["time/step"] = sum(times.values())
        metrics["tokens_per_s"] = total_tokens / max(metrics["time/step"], 1e-9)
        metrics["response_len"] = total_tokens / max(len(resps), 1)
        return metrics

    def optimizer_step(self) -> dict:
        metrics = self.optimizer.step(self.step)
        if metrics.pop("skipped", 0.0):
            _log(f"[train] step {self.step + 1}: fp16 loss scale overflow: optimiser step skipped")
        self.teacher.update(self.model)
        return metrics

    # ------------------------------------------------------------------ evaluation and checkpoints

    def evaluate(self) -> None:
        d = self.cfg.data
        if not d.eval_file:
            return
        records, meta = load_records(d.eval_file)
        items = eval_items(records, tokenizer=self.tokenizer, family=d.tokenizer,
                           image_root=d.image_root or meta.get("image_root") or Path(d.eval_file).parent,
                           crop_margin=d.crop_margin, min_crop_size=d.min_crop_size)
        split = lambda reqs, spec, weight_version: generate_split(self.engine, self.layout, reqs, spec,  # noqa: E731
                                                                  weight_version=weight_version)
        result = evaluate(self.engine, items, weight_version=self.version, max_tokens=self.cfg.rollout.max_tokens,
                          tokenizer=self.tokenizer, log=lambda *_: None, generate=split)
        if not self.rank0:
            return
        row = {"step": self.step, **result.to_dict()}
        self.eval_rows = [r for r in self.eval_rows if r["step"] != self.step] + [row]
        _log(f"[eval] step {self.step}: full-image acc {row['full_acc']:.3f}  crop acc {row['crop_acc']:.3f}  "
             f"gap {row['gap']:+.3f}  (n={row['n']})")
        path = self._eval_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.eval_rows, indent=1))
        plot_accuracy(self.eval_rows, path.with_suffix(".png"))

    def save(self) -> None:
        t0 = time.perf_counter()
        path = save_checkpoint(self.cfg.checkpoint.dir, self.step, optimizer=self.optimizer, model_cfg=self.cfg.model,
                               state={"step": self.step, "data": self.loader.state_dict()}, teacher=self.teacher,
                               keep_last=self.cfg.checkpoint.keep_last)
        _log(f"[train] checkpoint {path} ({time.perf_counter() - t0:.1f}s)")

    # ------------------------------------------------------------------ the loop

    def fit(self) -> list[dict]:
        cfg, total = self.cfg, self.cfg.optimizer.train_steps
        logger = MetricsLogger(cfg.logging, total_steps=total, enabled=self.rank0, run_config=to_dict(cfg),
                               resume_step=self.step, root=cfg.checkpoint.dir)
        history = []
        opd = self.objective.needs_engine
        if opd and self.step < total:
            self.start_engine()
            if self.step == 0 or not self.eval_rows:
                self.evaluate()
        batches = iter(self.loader)
        _log(f"[train] {cfg.objective}: steps {self.step + 1}..{total}, {cfg.data.prompts_per_step} prompts/step"
             + (f" x {cfg.rollout.n_samples} samples" if opd else "") + f", world {self.info.world_size} "
             f"(TP{self.info.tp_size} PP{self.info.pp_size} DP{self.info.dp_size})")
        try:
            while self.step < total:
                metrics = self.train_step(next(batches))
                history.append({"step": self.step, **metrics})
                logger.log(self.step, metrics)
                warning = self.objective.warning(self.step, metrics)
                if warning:
                    _log(f"[train] WARNING step {self.step}: {warning}")
                interval = cfg.checkpoint.save_interval
                if self.step == total or (interval and self.step % interval == 0):
                    self.save()
                if opd and cfg.eval_interval and self.step % cfg.eval_interval == 0 and self.step != total:
                    self.evaluate()
            if opd and self.step > self.start_step:
                self.evaluate()
        finally:
            logger.close()
            if self.engine is not None:
                self.engine.shutdown()
        return history


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    try:
        cfg = load_config(argv[0], argv[1:])
        problems = preflight(cfg)  # the files, before any process group, model or engine
        if problems:
            raise ConfigError("the run cannot start:\n  " + "\n  ".join(problems))
    except (ConfigError, FileNotFoundError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    history = Trainer(cfg).fit()
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps({"losses": [h["loss"] for h in history],
                                       "steps": [h["step"] for h in history]}), flush=True)
    dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
