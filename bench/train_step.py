"""Training-step throughput of this stack against a naive transformers implementation of the same step.

    .venv/bin/python bench/train_step.py          # 8 prompts x 4 samples x ~24 tokens, 1 + 3 timed steps
    .venv/bin/python bench/train_step.py --anchor-weights 0,1                # + the crop-anchor configuration
    .venv/bin/python bench/train_step.py --prompts 2 --samples 2 --steps 1   # smoke size (tests)

The product is ``TRAIN_STEP_RATIO`` = ours / naive response tokens per second (same model, same batch,
same process; steps of the two are interleaved so both see the same load from other processes).

The workload: one Vision-OPD optimiser step of the tiny Qwen2.5-VL (``configs/model/tiny-qwen2.5-vl``,
fp32, real 151,936 vocabulary, ``transformer_impl=local``) on ``--prompts`` synthetic 224 px scenes
(``data.synth``: full image with the red box for the student, the evidence crop for the teacher), each
with ``--samples`` FIXED responses of about ``--response-len`` random token ids (seeded, ids < 150,000;
lengths vary by +-25% so there is padding). No rollout engine: sampling is the same in both stacks and
is not measured. The initial weights are the tiny model's init with matrices redrawn at std
``--init-std`` (0.08, as ``tests/hf_models.py``) so that the two views' logits differ visibly and the
loss check means something; the rollout log-probs are the initial policy's own log-probs of the
responses on the student view (strictly on-policy), so the importance weights
``min(exp(logp_old - logp_rollout), 2)`` are 1 at the first step.

* ``ours``: exactly what ``Trainer.train_step`` + ``optimizer_step`` do after the rollout:
  ``micro_batches`` of the full and crop views (``--budget`` tokens), ``objectives.VisionOPD``
  with an EMA teacher (``Teacher("ema", ...)``; generalised JSD alpha 0.5, top-k 100 + tail, IS clip 2,
  only the response tokens reach the output layer, chunked vocab-parallel loss with in-place gradient),
  through Megatron DDP (fp32 main grads), then ``StudentOptimizer.step`` (``build_optimizer``: Megatron's
  optimizer, clip 1.0, AdamW at ``lr_at``), ``teacher.update``.
* ``naive``: the same weights (exported with ``save_hf_weights``) loaded into transformers' own model
  of the family (``Architecture.hf_model_class``; fp32, ``--attn`` sdpa by default) plus a ``deepcopy``
  as the EMA teacher. Per micro-batch (the SAME micro-batches as ours): teacher forward under no_grad with FULL
  logits ``[B, S, V]``, student forward with FULL logits, the response positions gathered, the dense
  reference ``generalized_jsd_loss`` (same alpha/top-k/IS weights, sum / global tokens), backward; then
  ``torch.nn.utils.clip_grad_norm_``, ``torch.optim.AdamW`` (default implementation, weight decay 0.01
  on every parameter), EMA ``lerp_`` of every teacher parameter.

``--anchor-weights 0,1``: each weight is a separate configuration (fresh models from the same initial
weights; each one adds the full runtime again); 1.0 adds the crop anchor (the student on the crop
sequences, same divergence to the same teacher logits) to both stacks. ``TRAIN_STEP_RATIO`` is the
first weight's (default: 0 only); the others print ``TRAIN_STEP_RATIO_ANCHOR<w>``.

Apples to apples: the first (warm-up) step of both stacks sees identical weights and batch, so their
losses and gradient norms must agree (``LOSS_CHECK passed`` needs |diff| <= 1e-4 |naive| + 1e-12);
the script exits 1 otherwise. Memory: the peak RSS of the process during a step (VmHWM after
resetting it through ``/proc/self/clear_refs``) minus the RSS just before it; approximate (allocator
caching), "n/a" where the kernel refuses the reset.

Threads: one by default, for both stacks. On a shared 2-core machine with another job busy, two
OpenMP threads made both stacks slower and erratic (ours 5-19 s per step against a steady 3.2-3.4 s
with one thread, at 4 prompts x 4 samples): the many small kernels (e.g. the windowed vision
attention) wait on the thread that shares its core. Pass ``--threads N`` on N idle cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (synthetic 224 px scenes)")
    ap.add_argument("--samples", type=int, default=4, help="responses per prompt")
    ap.add_argument("--response-len", type=int, default=24, help="mean response length (tokens, +-25%%)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per stack (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first one is the loss check)")
    ap.add_argument("--budget", type=int, default=4096, help="micro-batch token budget (optimizer.micro_batch_tokens)")
    ap.add_argument("--anchor-weights", default="0", help="comma-separated crop_anchor_weight values to run")
    ap.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="transformers attention implementation")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-std", type=float, default=0.08, help="std of the initial weight matrices")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both stacks (default 1: see the module docstring; N for N idle cores)")
    args = ap.parse_args(argv)
    args.anchor_weights = [float(w) for w in args.anchor_weights.split(",") if w.strip()]
    if args.warmup < 1:
        ap.error("--warmup must be >= 1 (the first step is the loss-agreement check)")
    return args


# ---------------------------------------------------------------------- memory


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measured(fn):
    """Run ``fn()``; returns (result, seconds, bytes added at peak or None)."""
    base, can_reset = _rss(), _reset_peak()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, (_peak() - base if can_reset else None)


# ---------------------------------------------------------------------- data


def make_prompts(args, workdir: Path):
    from megatron_vopd.architecture import architecture
    from megatron_vopd.config import load_model_config
    from megatron_vopd.data.loader import PromptLoader
    from megatron_vopd.data.synth import synthesize
    from megatron_vopd.data.tokenizer import load_tokenizer

    jsonl = synthesize(workdir / "data", args.prompts, seed=args.seed, size=args.image_size, answer_format="sentence")
    tokenizer = load_tokenizer("qwen2.5")
    cfg = load_model_config("tiny-qwen2.5-vl")
    processor = architecture(cfg.arch).image_processor(cfg, min_pixels=56 * 56, max_pixels=args.image_size ** 2)
    loader = PromptLoader.from_file(jsonl, tokenizer=tokenizer, batch_size=args.prompts, shuffle=False,
                                    image_processor=processor, crop_margin=0.5, min_crop_size=56)
    batch = next(iter(loader))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return batch.prompts, pad


def make_responses(args, vocab: int):
    from megatron_vopd.train.sequences import Response

    rng = np.random.default_rng(args.seed)
    lo, hi = max(1, args.response_len - args.response_len // 4), args.response_len + args.response_len // 4
    out = []
    for p in range(args.prompts):
        for _ in range(args.samples):
            n = int(rng.integers(lo, hi + 1))
            out.append(Response(p, rng.integers(0, min(vocab, 150000), n).astype(np.int64),
                                np.zeros(n, np.float32), False))
    return out


def on_policy_logprobs(model, mbs) -> None:
    """Set every micro-batch's ``rollout_logprobs`` to the initial policy's log-probs of its targets on
    the student view (what a strictly on-policy engine returns), so the first step's weights are 1."""
    from megatron_vopd.distill.vocab_parallel import vocab_parallel_token_stats
    from megatron_vopd.train.schedule import forward_backward

    def keep(out, batch):
        batch["rollout_logprobs"] = vocab_parallel_token_stats(out.detach(), batch["targets"])[0].float()
        return out.sum() * 0, {}

    with torch.no_grad():
        forward_backward(model, mbs["full"], keep, forward_only=True)


# ---------------------------------------------------------------------- the two stacks


class Ours:
    def __init__(self, cfg, state, distill, opt_cfg):
        from megatron_vopd.architecture import architecture
        from megatron_vopd.config import ParallelConfig, VopdConfig
        from megatron_vopd.distill.teacher import Teacher
        from megatron_vopd.train.objectives import VisionOPD
        from megatron_vopd.train.optim import build_optimizer

        build_model = architecture(cfg.arch).build_model
        self.model = build_model(cfg, ParallelConfig(), init_weights=False)
        self.model.load_state_dict(state)
        self.model.train()
        self.teacher = Teacher("ema", self.model, lambda: build_model(cfg, ParallelConfig(), init_weights=False),
                               distill.ema_rate)
        self.optimizer = build_optimizer(self.model, opt_cfg, cfg)
        self.objective = VisionOPD(VopdConfig(model=cfg, distill=distill), tokenizer=None)
        self.opt_cfg, self.step_i = opt_cfg, 0

    def step(self, mbs, total_tokens):
        self.optimizer.zero_grad()
        metrics = self.objective.gradient(self.optimizer.ddp, self.teacher.model, mbs, total_tokens=total_tokens,
                                          dp_group=None)
        norm = self.optimizer.step(self.step_i)["grad_norm"]
        self.teacher.update(self.model)
        self.step_i += 1
        return {"loss": metrics["loss"], "anchor": metrics.get("loss/anchor", 0.0), "grad_norm": norm}


class Naive:
    def __init__(self, hf_dir, attn, distill, opt_cfg, hf_model_class):
        self.model = hf_model_class.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation=attn)
        self.model.train()
        self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt_cfg.lr, betas=tuple(opt_cfg.betas),
                                           eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay)
        self.image_token_id = self.model.config.image_token_id
        self.distill, self.opt_cfg, self.step_i = distill, opt_cfg, 0

    def logits(self, model, mb):
        from megatron_vopd.models.stage import expand_images

        # the naive stack encodes every sample's image (the patches repeated per sequence)
        pixels = expand_images(mb["pixel_values"], mb["vision_grid_thw"], mb["image_source"], 1)
        out = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], pixel_values=pixels,
                    image_grid_thw=mb["image_grid_thw"], mm_token_type_ids=(mb["input_ids"] == self.image_token_id).int(),
                    use_cache=False)
        return out.logits  # [B, S, V]: every position

    def step(self, mbs, total_tokens):
        from megatron_vopd.distill.loss import generalized_jsd_loss
        from megatron_vopd.train.optim import lr_at

        d = self.distill
        kw = dict(alpha=d.alpha, top_k=d.top_k, temperature=d.temperature, reduction="sum")
        loss_sum, anchor_sum = 0.0, 0.0
        for smb, tmb in zip(mbs["full"], mbs["crop"]):
            with torch.no_grad():
                teacher = self.logits(self.teacher, tmb)[tmb["logit_positions"]]
            student = self.logits(self.model, smb)[smb["logit_positions"]]
            mask = torch.ones(len(student), dtype=torch.bool)
            logp = torch.log_softmax(student.detach().float() / d.temperature, -1)
            logp = logp.gather(-1, smb["targets"][:, None])[:, 0]
            loss = generalized_jsd_loss(student, teacher, mask, log_ratio=logp - smb["rollout_logprobs"],
                                        is_clip=d.is_clip, **kw)
            loss_sum += loss.item()
            total = loss / total_tokens
            if d.crop_anchor_weight > 0:
                crop = self.logits(self.model, tmb)[tmb["logit_positions"]]
                anchor = generalized_jsd_loss(crop, teacher, mask, is_clip=d.is_clip, **kw)
                anchor_sum += anchor.item()
                total = total + anchor * (d.crop_anchor_weight / total_tokens)
            total.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.opt_cfg.clip_grad).item()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step_i, self.opt_cfg)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.model.parameters()):
                t.lerp_(s, d.ema_rate)
        self.step_i += 1
        return {"loss": loss_sum / total_tokens, "anchor": anchor_sum / total_tokens, "grad_norm": norm}


# ---------------------------------------------------------------------- main


def run_config(args, anchor, cfg, state, hf_dir, mbs, total_tokens):
    from megatron_vopd.architecture import architecture
    from megatron_vopd.config import DistillConfig, OptimizerConfig

    distill = DistillConfig(alpha=0.5, top_k=100, teacher="ema", ema_rate=0.05, crop_anchor_weight=anchor)
    opt_cfg = OptimizerConfig(lr=args.lr, weight_decay=0.01, clip_grad=1.0, warmup_steps=10, schedule="constant",
                              micro_batch_tokens=args.budget)
    stacks = {"ours": Ours(cfg, state, distill, opt_cfg), "naive": Naive(hf_dir, args.attn, distill, opt_cfg,
                                                                         architecture(cfg.arch).hf_model_class())}
    counts = {k: sum(p.numel() for p in s.model.parameters() if p.requires_grad) for k, s in stacks.items()}
    print(f"\n== crop_anchor_weight {anchor:g}: trainable parameters ours {counts['ours']:,}, naive {counts['naive']:,}",
          flush=True)
    times = {k: [] for k in stacks}
    mems = {k: [] for k in stacks}
    first = {}
    for i in range(args.warmup + args.steps):
        timed = i >= args.warmup
        for name, stack in stacks.items():  # interleaved: both see the same background load
            m, dt, mem = measured(lambda: stack.step(mbs, total_tokens))
            if i == 0:
                first[name] = m
            if timed:
                times[name].append(dt)
            if mem is not None:
                mems[name].append(mem)
            print(f"step {i + 1}/{args.warmup + args.steps} {'timed' if timed else 'warm-up'} {name:5s}: {dt:7.2f} s  "
                  f"loss {m['loss']:.4e}" + (f"  anchor {m['anchor']:.4e}" if anchor > 0 else "")
                  + f"  grad norm {m['grad_norm']:.4e}" + (f"  +{mem / 2**30:.2f} GiB peak" if mem is not None else ""),
                  flush=True)
    diffs = {k: abs(first["ours"][k] - first["naive"][k]) for k in ("loss", "anchor", "grad_norm")}
    ok = all(diffs[k] <= 1e-4 * abs(first["naive"][k]) + 1e-12 for k in diffs)
    seconds = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: total_tokens / s for k, s in seconds.items()}
    result = dict(anchor=anchor, step_s=seconds, step_times_s=times, tokens_per_s=rate,
                  peak_added_bytes={k: (max(v) if v else None) for k, v in mems.items()},
                  first_step={k: first[k] for k in stacks}, first_step_abs_diff=diffs, loss_check=ok,
                  ratio=rate["ours"] / rate["naive"])
    print(f"first-step |diff| ours vs naive: loss {diffs['loss']:.2e}, anchor {diffs['anchor']:.2e}, "
          f"grad norm {diffs['grad_norm']:.2e} -> {'agree' if ok else 'DISAGREE'}", flush=True)
    for k in stacks:
        mem = result["peak_added_bytes"][k]
        print(f"  {k:5s}: {seconds[k]:7.3f} s/step (median of {len(times[k])}), {rate[k]:8.1f} response tokens/s, "
              f"peak memory added {'n/a' if mem is None else f'{mem / 2**30:.2f} GiB'}", flush=True)
    print(f"  ratio ours / naive tokens/s: {result['ratio']:.4f}", flush=True)
    del stacks
    return result


def main(argv=None):
    args = parse_args(argv)
    from megatron_vopd.bridge.export import save_hf_weights
    from megatron_vopd.bridge.table import MappingTable
    from megatron_vopd.architecture import architecture
    from megatron_vopd.config import ParallelConfig, load_model_config
    from megatron_vopd.runtime import init_distributed
    from megatron_vopd.train.sequences import micro_batches, view_sequences

    init_distributed(1, 1, seed=1234)
    torch.set_num_threads(args.threads)
    cfg = load_model_config("tiny-qwen2.5-vl")
    cfg.transformer_impl, cfg.params_dtype = "local", "float32"
    import transformers
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads, {len(os.sched_getaffinity(0))} cores), "
          f"transformers {transformers.__version__}, attention {args.attn}", flush=True)

    with tempfile.TemporaryDirectory(prefix="vopd-bench-train-") as tmp:
        tmp = Path(tmp)
        prompts, pad = make_prompts(args, tmp)
        resps = make_responses(args, cfg.vocab_size)
        views = {v: view_sequences(prompts, resps, v) for v in ("full", "crop")}
        total_tokens = sum(len(r.token_ids) for r in resps)
        arch = architecture(cfg.arch)
        mbs = micro_batches(views, budget=args.budget, pad_id=pad,
                            position_ids=lambda ids, grid, mask: arch.position_ids(cfg, ids, grid, mask))
        shapes = {v: [tuple(mb["input_ids"].shape) for mb in mbs[v]] for v in mbs}
        print(f"batch: {args.prompts} prompts x {args.samples} samples = {len(resps)} sequences, "
              f"{total_tokens} response tokens/step; micro-batches (budget {args.budget}) full {shapes['full']}, "
              f"crop {shapes['crop']}", flush=True)

        model = arch.build_model(cfg, ParallelConfig())  # the initial weights both stacks start from
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():  # wider than the 0.02 init (as tests/hf_models.py) so the views' logits differ
            for p in model.parameters():
                if p.dim() > 1:
                    p.copy_(torch.empty(p.shape).normal_(0, args.init_std, generator=gen))
        on_policy_logprobs(model, mbs)
        save_hf_weights(model, MappingTable.for_config(cfg), cfg, tmp / "hf")
        state = copy.deepcopy(model.state_dict())
        del model
        print(f"model: tiny-qwen2.5-vl ({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}), "
              "float32, local; exported to HF safetensors for the naive stack", flush=True)

        results = [run_config(args, w, cfg, state, str(tmp / "hf"), mbs, total_tokens) for w in args.anchor_weights]

    ok = all(r["loss_check"] for r in results)
    summary = dict(prompts=args.prompts, samples=args.samples, response_tokens=total_tokens, budget=args.budget,
                   attn=args.attn, threads=torch.get_num_threads(), configs=results, loss_check=ok,
                   ratio=results[0]["ratio"])
    print("\nRESULT " + json.dumps(summary), flush=True)
    print(f"LOSS_CHECK {'passed' if ok else 'FAILED'}", flush=True)
    for r in results[1:]:
        print(f"TRAIN_STEP_RATIO_ANCHOR{r['anchor']:g} {r['ratio']:.4f}", flush=True)
    print(f"TRAIN_STEP_RATIO {results[0]['ratio']:.4f}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
