"""``vopd eval``: multiple-choice accuracy of Megatron checkpoints on the full image and on the crop.

    vopd eval --ckpt RUN_DIR --data eval.parquet --out outputs/eval [--config configs/demo.yaml] [key.sub=value ...]

``--ckpt`` is a Megatron checkpoint folder (``metadata.json`` + ``vopd_model.yaml``) or a training-run
folder holding ``iter_*`` checkpoints (all evaluated, in step order); it may be repeated. The model
is built at TP1, the first checkpoint is exported as a HF folder (``OUT/engine``, with the processor
resizing images by ``data.min_pixels``/``data.max_pixels`` as training does) and served by a vLLM
engine; every further checkpoint is loaded into the model and pushed to the engine by a weight sync.
``--engines N`` runs N processes under torchrun, each with its engine (one per GPU; on the CPU they
split the cores), and splits the questions over them as the trainer's evaluation does. Writes
``OUT/eval.json`` (one row per checkpoint, rewritten after each), ``OUT/predictions_<name>.jsonl`` and
``OUT/eval.png``. Bad inputs exit with code 2.

``--benchmark NAME[,NAME...]`` evaluates the paper's benchmarks instead (``eval/bench_run.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from megatron_vopd.bridge.megatron_ckpt import iteration_folders, iteration_step


class EvalInputError(ValueError):
    pass


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of Megatron checkpoints on the full image and the crop (vLLM, greedy)")
    p.add_argument("--ckpt", action="append", required=True, metavar="DIR",
                   help="Megatron checkpoint folder, or a run folder of iter_* checkpoints (repeatable); "
                        "with --benchmark one, which may also be a Hugging Face folder")
    p.add_argument("--data", help="eval parquet (vopd data prepare) or raw jsonl; default: data.eval_file")
    p.add_argument("--out", required=True, help="output folder: eval.json, eval.png, predictions, engine/")
    p.add_argument("--config", help="recipe (e.g. configs/demo.yaml, or a scale-out recipe's name) for data.* and "
                                    "rollout.*; default: defaults")
    p.add_argument("--max-tokens", type=int,
                   help="response tokens at most (default: rollout.max_tokens; with --benchmark 32768, the reference's)")
    p.add_argument("--limit", type=int, help="evaluate the first N records only")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate call (two requests each)")
    p.add_argument("--engines", type=int, default=1,
                   help="vLLM engines the questions are split over, one process each (torchrun); default 1")
    b = p.add_argument_group("the paper's benchmarks (--benchmark; see megatron_vopd/eval/bench_run.py)")
    b.add_argument("--benchmark", metavar="NAME[,NAME...]",
                   help="vstar, zoombench, hrbench-4k, hrbench-8k, mme-realworld, mme-realworld-cn (the paper's six), "
                        "mme-realworld-lite, mmstar, pope, cv-bench, mmvp; --data is then the downloaded files")
    b.add_argument("--judge", metavar="URL", help="OpenAI-compatible endpoint judging answers no rule matched "
                                                  "(default: none; they count as wrong, and the output says so)")
    b.add_argument("--judge-model", help="the judge's model name (default: the server's first)")
    b.add_argument("--views", default="full", help="full, or full,crop: also answer on a benchmark's own crops")
    b.add_argument("--strict", action="store_true", help="stop at the first row that cannot be read")
    b.add_argument("--min-pixels", type=int, help="image processor lower bound of an exported checkpoint "
                                                  "(default: the family's)")
    b.add_argument("--max-pixels", type=int, help="image processor upper bound (default: the family's)")
    b.add_argument("--max-model-len", type=int, help="engine context (default: rollout.max_model_len)")
    p.add_argument("overrides", nargs="*", help="key.sub=value, e.g. rollout.max_model_len=2048")
    p.set_defaults(func=run)


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint folder: the int in ``iter_0000050``, else 0."""
    return iteration_step(path.name) or 0


def is_checkpoint(path: Path) -> bool:
    return (path / "metadata.json").is_file() and (path / "vopd_model.yaml").is_file()


def resolve_checkpoints(paths: list[str]) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint named: a checkpoint itself, or a run root's ``iter_*`` ones."""
    out = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise EvalInputError(f"{p}: no such checkpoint directory")
        if is_checkpoint(p):
            out.append((checkpoint_step(p), p))
            continue
        found = [(step, d) for step, d in iteration_folders(p) if is_checkpoint(d)]
        if not found:
            raise EvalInputError(f"{p}: not a Megatron checkpoint (no metadata.json + vopd_model.yaml) and holds no "
                                 "iter_* checkpoint folders")
        out += found
    return out


def _load_inputs(args):
    """Config, checkpoints, model config, records and image root; EvalInputError/ConfigError on bad input."""
    from megatron_vopd.bridge.megatron_ckpt import read_model_config
    from megatron_vopd.config import load_config, resolve_recipe, to_dict
    from megatron_vopd.data.loader import load_records

    cfg = load_config(str(resolve_recipe(args.config)) if args.config else None, args.overrides)
    ckpts = resolve_checkpoints(args.ckpt)
    model_cfg = read_model_config(ckpts[0][1])
    for _, c in ckpts[1:]:
        if to_dict(read_model_config(c)) != to_dict(model_cfg):
            raise EvalInputError(f"{c}: its model (vopd_model.yaml) differs from that of {ckpts[0][1]}; "
                                 "evaluate checkpoints of one model per run")
    data = args.data or cfg.data.eval_file
    if not data:
        raise EvalInputError("no data file: pass --data FILE (or set data.eval_file)")
    if not Path(data).is_file():
        raise EvalInputError(f"{data}: no such data file")
    records, meta = load_records(data)
    if args.limit is not None:
        records = records[:max(args.limit, 0)]
    if not records:
        raise EvalInputError(f"{data}: no records to evaluate")
    image_root = cfg.data.image_root or meta.get("image_root") or str(Path(data).parent)
    return cfg, ckpts, model_cfg, records, image_root, data


def _table(rows: list[dict]) -> str:
    lines = [f"{'step':>8} {'n':>6} {'full':>7} {'crop':>7} {'gap':>7} {'unparsed f/c':>13}  ckpt"]
    for r in rows:
        lines.append(f"{r['step']:>8} {r['n']:>6} {r['full_acc']:>7.3f} {r['crop_acc']:>7.3f} {r['gap']:>+7.3f} "
                     f"{str(r['full_unparsed']) + '/' + str(r['crop_unparsed']):>13}  {r['ckpt']}")
    return "\n".join(lines)


def run(args) -> int:
    from megatron_vopd.config import ConfigError
    from megatron_vopd.data.errors import DataError

    if args.benchmark:
        from megatron_vopd.eval.bench_run import run as run_benchmarks

        return run_benchmarks(args)
    try:
        if args.engines < 1:
            raise EvalInputError(f"--engines {args.engines}: must be >= 1")
        cfg, ckpts, model_cfg, records, image_root, data = _load_inputs(args)
    except (EvalInputError, ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.engines > 1 and "RANK" not in os.environ:  # become N processes, each with its engine
        from megatron_vopd.runtime.torchrun import threads_per_process, torchrun_command

        cmd = torchrun_command(args.engines, "megatron_vopd.cli", *args.argv)
        os.execvpe(cmd[0], cmd, {**os.environ, "OMP_NUM_THREADS": threads_per_process(args.engines)})
    return evaluate_checkpoints(cfg, ckpts, model_cfg, records, image_root, Path(args.out),
                                max_tokens=args.max_tokens or cfg.rollout.max_tokens, batch_size=args.batch_size)


def evaluate_checkpoints(cfg, ckpts, model_cfg, records, image_root, out: Path, *, max_tokens: int,
                         batch_size: int = 64) -> int:
    import torch
    import torch.distributed as dist

    from megatron_vopd.architecture import architecture
    from megatron_vopd.bridge.megatron_ckpt import load_model
    from megatron_vopd.bridge.table import MappingTable
    from megatron_vopd.config import ParallelConfig
    from megatron_vopd.data.tokenizer import load_tokenizer
    from megatron_vopd.eval.accuracy import eval_items, evaluate
    from megatron_vopd.eval.plot import plot_accuracy
    from megatron_vopd.rollout.factory import start_engine
    from megatron_vopd.rollout.layout import generate_split
    from megatron_vopd.rollout.weight_sync import sync_weights
    from megatron_vopd.runtime import destroy_distributed, init_distributed, log_rank0

    cuda = torch.cuda.is_available()
    if not cuda:
        model_cfg.transformer_impl = "local"
    dtype = cfg.rollout.dtype if cuda else architecture(model_cfg.arch).cpu_rollout_dtype
    family = cfg.data.tokenizer
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(family)
    items = eval_items(records, tokenizer=tokenizer, family=family, image_root=image_root,
                       crop_margin=cfg.data.crop_margin, min_crop_size=cfg.data.min_crop_size)
    init_distributed(1, 1, seed=cfg.seed)
    rank0 = dist.get_rank() == 0
    log_rank0(f"[eval] {len(items)} prompts x 2 views, {len(ckpts)} checkpoint(s), max_tokens={max_tokens}")
    engine, rows = None, []
    try:
        model = architecture(model_cfg.arch).build_model(model_cfg, ParallelConfig(), init_weights=False)
        model.eval()
        table = MappingTable.for_config(model_cfg)
        for version, (step, ckpt) in enumerate(ckpts):
            load_model(model, ckpt)
            if engine is None:  # the engine starts from the first checkpoint's weights on disk
                engine_dir = out / "engine"
                if rank0:
                    shutil.rmtree(engine_dir, ignore_errors=True)
                engine, layout = start_engine(model, model_cfg, cfg.rollout, engine_dir,
                                              min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels,
                                              dtype=dtype)
            else:
                stats = sync_weights(engine, model, model_cfg, version=version,
                                     bucket_bytes=cfg.rollout.weight_sync_bucket_bytes, dtype=dtype, table=table)
                log_rank0(f"[eval] synced {ckpt} to the engine(s) ({stats['bytes'] / 1e6:.1f} MB, "
                          f"{stats['seconds']:.1f}s)")
            log_rank0(f"[eval] step {step}: {ckpt}")
            split = lambda reqs, spec, weight_version: generate_split(engine, layout, reqs, spec,  # noqa: E731
                                                                      weight_version=weight_version)
            result = evaluate(engine, items, weight_version=engine.weight_version, max_tokens=max_tokens,
                              tokenizer=tokenizer, batch_size=batch_size, log=log_rank0, generate=split)
            if not rank0:
                continue
            rows.append({"step": step, "ckpt": str(ckpt), **result.to_dict()})
            names = [c.name for _, c in ckpts]
            name = ckpt.name if names.count(ckpt.name) == 1 else f"{ckpt.parent.name}_{ckpt.name}"
            with open(out / f"predictions_{name}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(p) + "\n" for p in result.predictions)
            (out / "eval.json").write_text(json.dumps(rows, indent=2) + "\n")
            plot_accuracy(rows, out / "eval.png")
    finally:
        if engine is not None:
            engine.shutdown()
        destroy_distributed()
    if not rank0:
        return 0
    print(_table(rows), flush=True)
    print(f"[eval] wrote {out / 'eval.json'} and {out / 'eval.png'}", flush=True)
    return 0
