"""The training loop, top to bottom. Run it under torchrun (any TP x PP x DP):

    torchrun --nproc-per-node N -m megatron_vopd.train.trainer configs/demo.yaml [key.sub=value ...]

One step (``objective: vision_opd``)::

    prompts  = next(loader)                                 # both views of prompts_per_step prompts
    samples  = engine.generate(prompts, n=rollout.n_samples) # rank 0 holds the vLLM engine; broadcast
    mbs      = micro_batches(student | teacher sequences)    # this data-parallel rank's share
    metrics  = objectives.vision_opd(model, teacher, mbs)    # teacher fwd, student fwd/bwd, crop anchor
    fp32 grads summed over data parallelism (Megatron DDP), clipped; AdamW step on the fp32 masters at
    lr_at(step), rounded into the model (Megatron's optimizer, train/optim.py); EMA teacher update (fp32)
    sync_weights(engine, model)                              # the engine follows the policy
    log; every checkpoint.save_interval steps (and at the end): checkpoint

``objective: crop_sft`` is the demo's labelled warm-up (no rollouts, no teacher). With
``data.eval_file`` the vision_opd run evaluates full-image vs crop accuracy through its own engine
before the first step, every ``eval_interval`` steps and after the last (``eval.json`` / ``eval.png``
beside the checkpoints).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch.distributed as dist

from megatron_vopd.config import VopdConfig, load_config, validate


def _log(msg: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(msg, flush=True)


class Trainer:
    def __init__(self, cfg: VopdConfig):
        from megatron.core import parallel_state as ps

        from megatron_vopd.bridge.megatron_ckpt import load_model
        from megatron_vopd.data.loader import PromptLoader
        from megatron_vopd.data.tokenizer import load_tokenizer
        from megatron_vopd.distill.teacher import Teacher
        from megatron_vopd.models.qwen25_vl import build_model
        from megatron_vopd.runtime import init_distributed
        from megatron_vopd.train.checkpoint import latest_checkpoint, load_checkpoint
        from megatron_vopd.train.optim import build_optimizer

        p = cfg.parallel
        self.info = init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, seed=cfg.seed,
                                     timeout_s=3600)
        validate(cfg, world_size=self.info.world_size)
        self.cfg, self.rank0 = cfg, self.info.rank == 0
        self.dp_group = ps.get_data_parallel_group() if self.info.dp_size > 1 else None
        self.model = build_model(cfg.model, p)
        self.step, self.start_step = 0, 0
        ck = cfg.checkpoint
        latest = latest_checkpoint(ck.dir) if ck.resume else None
        if latest is None and ck.load:  # a model checkpoint, or a training run (its latest checkpoint)
            source = latest_checkpoint(ck.load) or ck.load
            _log(f"[train] initial weights from {source}")
            load_model(self.model, source)
        opd = cfg.objective == "vision_opd"
        self.teacher = Teacher(cfg.distill.teacher if opd else "current", self.model,
                               lambda: build_model(cfg.model, p, init_weights=False), cfg.distill.ema_rate,
                               group=self.dp_group)  # the fp32 EMA copy of a bf16 teacher is sharded over DP
        self.optimizer = build_optimizer(self.model, cfg.optimizer, cfg.model)
        chosen = self.optimizer.description
        _log(f"[train] {cfg.model.params_dtype} parameters; {chosen['optimizer']} ({chosen['adam']}), master weights: "
             f"{chosen['masters']}; {chosen['ddp']}")
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        self.loader = PromptLoader.from_config(cfg, tokenizer=self.tokenizer)
        if latest is not None:
            _log(f"[train] resuming from {latest}")
            state = load_checkpoint(latest, optimizer=self.optimizer, teacher=self.teacher)
            self.step = self.start_step = int(state["step"])
            self.loader.load_state_dict(state["data"])
        self.engine = None
        self.eval_rows: list[dict] = json.loads(self._eval_path().read_text()) if latest and self._eval_path().exists() else []

    # ------------------------------------------------------------------ rollout engine

    def _eval_path(self) -> Path:
        return Path(self.cfg.checkpoint.dir) / "eval.json"

    def start_engine(self) -> None:
        """Export the policy as it is now and start the engine from it (rank 0); version 0 = now."""
        from megatron_vopd.bridge.export import save_hf_weights
        from megatron_vopd.bridge.registry import MappingTable
        from megatron_vopd.data.hf_processor import save_processor
        from megatron_vopd.rollout.vllm_engine import VLLMEngine

        folder = Path(self.cfg.checkpoint.dir) / "engine"
        t0 = time.perf_counter()
        save_hf_weights(self.model, MappingTable.for_config(self.cfg.model), self.cfg.model, folder)
        if self.rank0:
            d = self.cfg.data
            save_processor(folder, d.tokenizer, min_pixels=d.min_pixels, max_pixels=d.max_pixels)
            self.engine = VLLMEngine.from_config(self.cfg.rollout, str(folder))
            self.engine.start()
        dist.barrier()
        _log(f"[train] rollout engine started from the step-{self.step} weights ({time.perf_counter() - t0:.0f}s)")

    @property
    def version(self) -> int:
        return self.step - self.start_step

    def rollout(self, prompts) -> list:
        from megatron_vopd.rollout.engine import RolloutRequest, SamplingSpec

        r = self.cfg.rollout
        samples = [None]
        if self.rank0:
            requests = [RolloutRequest([int(t) for t in p.prompt_ids], [p.student_image]) for p in prompts]
            spec = SamplingSpec(n=r.n_samples, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                                seed=r.seed + self.step)
            samples = [self.engine.generate(requests, spec, weight_version=self.version)]
        dist.broadcast_object_list(samples, src=0)
        return samples[0]

    # ------------------------------------------------------------------ one step

    def micro_batches(self, prompts, resps) -> tuple[dict, int]:
        from megatron_vopd.train.sequences import micro_batches, view_sequences

        m = self.cfg.model
        views = {v: view_sequences(prompts, resps, v) for v in ("student", "teacher")}
        total_rows = sum(len(r.token_ids) for r in resps)
        if len(resps) < self.info.dp_size:
            raise RuntimeError(f"step {self.step + 1}: {len(resps)} non-empty responses for {self.info.dp_size} "
                               "data-parallel replicas: raise data.prompts_per_step or rollout.n_samples")
        mine = {v: seqs[self.info.dp_rank::self.info.dp_size] for v, seqs in views.items()}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return micro_batches(mine, budget=self.cfg.optimizer.micro_batch_tokens, pad_id=pad,
                             image_token_id=m.image_token_id, spatial_merge_size=m.vision.spatial_merge_size), total_rows

    def train_step(self, batch) -> dict:
        from megatron_vopd.train import objectives
        from megatron_vopd.train.sequences import Response, responses

        metrics, times = {}, {}
        t = time.perf_counter()
        self.optimizer.zero_grad()
        student = self.optimizer.ddp  # forward/backward through Megatron DDP: fp32 main grads
        if self.cfg.objective == "vision_opd":
            samples = self.rollout(batch.prompts)
            times["rollout"] = time.perf_counter() - t
            resps, empty = responses(samples, self.cfg.data.max_response_length)
            metrics.update(self.answer_stats(samples, batch.prompts), empty_responses=empty,
                           truncated=sum(r.truncated for r in resps))
            mbs, total_rows = self.micro_batches(batch.prompts, resps)
            t = time.perf_counter()
            metrics.update(objectives.vision_opd(student, self.teacher.model, mbs, distill=self.cfg.distill,
                                                 total_rows=total_rows, dp_group=self.dp_group))
            times["teacher"] = metrics.pop("time/teacher")  # this rank's teacher forward passes
            times["student"] = time.perf_counter() - t - times["teacher"]  # student (+ crop anchor) fwd/bwd
        else:
            from megatron_vopd.data.synth import reference_response

            end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
            resps = []
            for i, p in enumerate(batch.prompts):
                text = reference_response(p.options, p.answer, self.cfg.data.answer_format)
                ids = np.asarray(self.tokenizer.encode(text) + [end], dtype=np.int64)
                resps.append(Response(i, ids, np.zeros(len(ids), np.float32), False))
            mbs, total_rows = self.micro_batches(batch.prompts, resps)
            metrics.update(objectives.crop_sft(student, {"teacher": mbs["teacher"]}, total_rows=total_rows,
                                               dp_group=self.dp_group))
            times["student"] = time.perf_counter() - t
        t = time.perf_counter()
        metrics.update(self.optimizer_step())
        times["optimizer"] = time.perf_counter() - t
        self.step += 1
        if self.cfg.objective == "vision_opd":  # the engine follows the policy (collective; rank 0 holds it)
            from megatron_vopd.rollout.weight_sync import sync_weights

            t = time.perf_counter()
            sync_weights(self.engine, self.model, self.cfg.model, version=self.version,
                         bucket_bytes=self.cfg.rollout.weight_sync_bucket_bytes, dtype=self.cfg.rollout.dtype)
            times["sync"] = time.perf_counter() - t
        metrics.update({f"time/{k}": v for k, v in times.items()})
        metrics["time/step"] = sum(times.values())
        metrics["tokens_per_s"] = total_rows / max(metrics["time/step"], 1e-9)
        metrics["response_len"] = total_rows / max(len(resps), 1)
        return metrics

    def optimizer_step(self) -> dict:
        metrics = self.optimizer.step(self.step)
        if metrics.pop("skipped", 0.0):
            _log(f"[train] step {self.step + 1}: fp16 loss scale overflow: optimiser step skipped")
        self.teacher.update(self.model)
        return metrics

    def answer_stats(self, samples, prompts) -> dict:
        """Entropy (nats) of the parsed answers over all samples, and the share of prompts whose samples
        all give one answer: with a balanced dataset a model that reads the image keeps the entropy
        near log(4); a collapsed one answers the same letter whatever the image."""
        from megatron_vopd.eval.accuracy import parse_choice

        answers = [[parse_choice(self.tokenizer.decode(s.token_ids, skip_special_tokens=True), options=p.options)
                    for s in per] for per, p in zip(samples, prompts)]
        counts = Counter(a for per in answers for a in per)
        total = sum(counts.values())
        entropy = sum(c / total * math.log(total / c) for c in counts.values()) if total else 0.0
        return {"answer_entropy": entropy, "unparsed": counts.get(None, 0) / max(total, 1)}

    # ------------------------------------------------------------------ evaluation and checkpoints

    def evaluate(self) -> None:
        from megatron_vopd.data.loader import load_records
        from megatron_vopd.eval.accuracy import eval_items, evaluate
        from megatron_vopd.eval.plot import plot_accuracy

        d = self.cfg.data
        if not d.eval_file or not self.rank0:
            return
        records, meta = load_records(d.eval_file)
        items = eval_items(records, tokenizer=self.tokenizer, family=d.tokenizer,
                           image_root=d.image_root or meta.get("image_root") or Path(d.eval_file).parent,
                           crop_margin=d.crop_margin, min_crop_size=d.min_crop_size)
        result = evaluate(self.engine, items, weight_version=self.version, max_tokens=self.cfg.rollout.max_tokens,
                          tokenizer=self.tokenizer, log=lambda *_: None)
        row = {"step": self.step, **result.to_dict()}
        self.eval_rows = [r for r in self.eval_rows if r["step"] != self.step] + [row]
        _log(f"[eval] step {self.step}: full-image acc {row['full_acc']:.3f}  crop acc {row['crop_acc']:.3f}  "
             f"gap {row['gap']:+.3f}  (n={row['n']})")
        path = self._eval_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.eval_rows, indent=1))
        plot_accuracy(self.eval_rows, path.with_suffix(".png"))

    def save(self) -> None:
        from megatron_vopd.train.checkpoint import save_checkpoint

        t0 = time.perf_counter()
        path = save_checkpoint(self.cfg.checkpoint.dir, self.step, optimizer=self.optimizer, model_cfg=self.cfg.model,
                               state={"step": self.step, "data": self.loader.state_dict()}, teacher=self.teacher,
                               keep_last=self.cfg.checkpoint.keep_last)
        _log(f"[train] checkpoint {path} ({time.perf_counter() - t0:.1f}s)")

    # ------------------------------------------------------------------ the loop

    def fit(self) -> list[dict]:
        from megatron_vopd.config import to_dict
        from megatron_vopd.train.metrics import MetricsLogger

        cfg, total = self.cfg, self.cfg.optimizer.train_steps
        logger = MetricsLogger(cfg.logging, total_steps=total, enabled=self.rank0, run_config=to_dict(cfg),
                               resume_step=self.step)
        history = []
        opd = cfg.objective == "vision_opd"
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
                if opd and metrics["loss"] < cfg.distill.collapse_loss and metrics["answer_entropy"] < 0.5:
                    _log(f"[train] WARNING step {self.step}: loss {metrics['loss']:.2e} while the answers barely vary "
                         f"(entropy {metrics['answer_entropy']:.2f} nats): the student and teacher may have collapsed "
                         "to an image-independent answer (see VISION_OPD.md; use distill.teacher=ema and a crop anchor)")
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
    from megatron_vopd.config import ConfigError

    try:
        cfg = load_config(argv[0], argv[1:])
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
