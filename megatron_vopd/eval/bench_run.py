"""``vopd eval --benchmark``: the paper's benchmarks through one vLLM engine, scored as the reference scores them.

    vopd eval --benchmark vstar,hrbench-4k --data /data/bench --ckpt CKPT --out outputs/bench [--judge URL]

``--data`` is the benchmark's file or folder for one benchmark; for several, a folder holding one
sub-folder per benchmark (``/data/bench/vstar/...``), each searched for the benchmark's files.
``--ckpt`` is a Hugging Face folder, a Megatron checkpoint or a training run (its latest checkpoint),
exported to ``OUT/engine`` with the family's processor at ``--min-pixels``/``--max-pixels`` (default:
the family's own limits, as the reference serves the model's own processor).

Per benchmark: greedy answers (thinking off, the family's chat template, the image before the text)
appended to ``OUT/NAME/predictions.jsonl`` as they come (a rerun skips the records already answered),
scored by ``eval.scoring`` into ``OUT/NAME/result.json``; rows that cannot be read are listed in
``OUT/NAME/bad_rows.jsonl`` and counted (``--strict`` stops at the first). Then ``OUT/summary.json``,
the table next to the paper's columns, and ``OUT/summary.png``. With ``--views full,crop`` the records
that ship an evidence crop (ZoomBench's ``crop_image``) are also answered on the crop.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from megatron_vopd.eval.benchmarks import NAMES, BadRow, BenchmarkInputError, benchmark_files, count_rows, read_benchmark

PNG_LIMIT = 20 * 1024 * 1024  # V*: re-encoded as PNG, shrunk by 0.75 while over 20 MiB (the reference's transport)


class BenchRunError(ValueError):
    """Bad arguments or inputs, found before the engine starts."""


def benchmark_names(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise BenchRunError(f"--benchmark {spec!r}: unknown {', '.join(unknown) or '(none given)'}; "
                            f"known: {', '.join(NAMES)}")
    return list(dict.fromkeys(names))


def data_for(name: str, data: Path, several: bool) -> Path:
    return data / name if several and (data / name).exists() else data


def transport_image(name: str, data: bytes):
    """The image as the reference's request delivers it: RGB; V* as PNG, shrunk while over 20 MiB."""
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    if name == "vstar":
        while im.width * im.height * 3 > PNG_LIMIT * 0.9 and min(im.size) > 100:  # only a big image can be over
            buf = io.BytesIO()
            im.save(buf, "PNG")
            if len(buf.getvalue()) <= PNG_LIMIT:
                break
            im = im.resize((int(im.width * 0.75), int(im.height * 0.75)), Image.LANCZOS)
    return im


def resolve_model(ckpt: Path, out: Path, *, min_pixels: int | None, max_pixels: int | None):
    """(HF folder the engine serves, its ModelConfig): ``ckpt`` itself when it is a HF folder, else the
    Megatron checkpoint (a run: its latest) exported to ``out/engine`` (reused when already exported)."""
    from megatron_vopd.bridge.hf_config import read_hf_config
    from megatron_vopd.bridge.megatron_ckpt import model_checkpoint, read_model_config

    if (ckpt / "config.json").is_file() and not (ckpt / "vopd_model.yaml").is_file():
        if min_pixels is not None or max_pixels is not None:
            raise BenchRunError(f"--min-pixels/--max-pixels apply to a Megatron checkpoint (exported with them); "
                                f"the Hugging Face folder {ckpt} is served with its own processor "
                                "(preprocessor_config.json), as the reference serves it")
        return ckpt, read_hf_config(ckpt)
    try:
        ckpt = model_checkpoint(ckpt)
    except FileNotFoundError as e:
        raise BenchRunError(f"--ckpt {e} (nor a Hugging Face folder: no config.json)") from None
    engine_dir, source = out / "engine", str(ckpt.resolve()) + f" pixels {min_pixels} {max_pixels}"
    stamp = engine_dir / ".vopd_exported_from"
    if not (stamp.is_file() and stamp.read_text() == source):
        from megatron_vopd.architecture import architecture
        from megatron_vopd.models.conversion import megatron_to_hf
        from megatron_vopd.runtime import destroy_distributed

        print(f"[bench] exporting {ckpt} to {engine_dir}", flush=True)
        try:
            megatron_to_hf(str(ckpt), str(engine_dir), overwrite=True)
        finally:
            destroy_distributed()
        architecture(read_model_config(ckpt).arch).save_processor(engine_dir, min_pixels=min_pixels,
                                                                  max_pixels=max_pixels)
        stamp.write_text(source)
    return engine_dir, read_model_config(ckpt)


def _read_done(path: Path) -> dict[tuple[str, str], dict]:
    """The answers of an earlier run, by (uid, view). A last line cut off by an interruption is dropped
    (and removed from the file, so the appended answers follow whole lines)."""
    done: dict[tuple[str, str], dict] = {}
    if not path.is_file():
        return done
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise BenchRunError(f"{path}:{i + 1}: not a JSON line; remove the file to start over") from None
            print(f"[bench] {path}: dropped a cut-off last line (an interrupted run)", flush=True)
            path.write_text("".join(lines[:-1]), encoding="utf-8")
            break
        done[(row["uid"], row["view"])] = row
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # a whole last line without its newline
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n")
    return done


class Progress:
    def __init__(self, name: str, total: int, already: int):
        self.name, self.total, self.done, self.t0, self.already = name, total, already, time.perf_counter(), already

    def step(self, rows: int) -> None:
        self.done += rows
        seconds = time.perf_counter() - self.t0
        rate = (self.done - self.already) / seconds if seconds > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        print(f"[bench] {self.name}: {self.done}/{self.total} rows, {rate:.2f} rows/s, ETA {eta:.0f}s", flush=True)


def run_benchmark(name: str, data: Path, out: Path, *, engine, tokenizer, family: str, max_tokens: int,
                  views: tuple[str, ...], batch_size: int, limit: int | None, strict: bool, judge) -> dict:
    """Answer, score and aggregate one benchmark; returns its result.json."""
    from megatron_vopd.data.chat_template import tokenize_prompt
    from megatron_vopd.eval.scoring import aggregate, judge_record
    from megatron_vopd.rollout.engine import RolloutRequest, SamplingSpec

    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / "predictions.jsonl"
    done = _read_done(pred_path)
    total = count_rows(name, data) if limit is None else min(limit, count_rows(name, data))
    progress = Progress(name, total, len({uid for uid, _ in done}))
    spec = SamplingSpec(n=1, temperature=0.0, max_tokens=max_tokens)
    bad: list[BadRow] = []
    pending: list[tuple[object, str]] = []  # (record, view)

    def flush() -> None:
        if not pending:
            return
        requests = []
        for rec, view in pending:
            ids = [int(t) for t in tokenize_prompt("<image>" + rec.query, tokenizer, family, thinking=False)]
            requests.append(RolloutRequest(ids, [transport_image(name, rec.image if view == "full" else rec.crop)]))
        outs = engine.generate(requests, spec, weight_version=engine.weight_version)
        with open(pred_path, "a", encoding="utf-8") as f:
            for (rec, view), samples in zip(pending, outs):
                text = tokenizer.decode(samples[0].token_ids, skip_special_tokens=True)
                row = {"uid": rec.uid, "view": view, "answer": text, **judge_record(name, rec.query, rec.gt, text, judge),
                       "gt": rec.gt, **rec.meta, "where": rec.where}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                done[(rec.uid, view)] = row
        progress.step(len({rec.uid for rec, _ in pending}))
        pending.clear()

    seen = 0
    for item in read_benchmark(name, data):
        if limit is not None and seen >= limit:
            break
        seen += 1
        if isinstance(item, BadRow):
            if strict:
                raise BenchRunError(f"{item} (--strict)")
            bad.append(item)
            continue
        for view in views:
            if view == "crop" and item.crop is None:
                continue
            if (item.uid, view) not in done:
                pending.append((item, view))
        if len(pending) >= batch_size:
            flush()
    flush()
    (out / "bad_rows.jsonl").write_text("".join(json.dumps({"where": b.where, "reason": b.reason}) + "\n" for b in bad))
    if bad:
        print(f"[bench] {name}: {len(bad)} row(s) could not be read and are not scored (first: {bad[0]}); "
              f"all in {out / 'bad_rows.jsonl'}", flush=True)
    rows = {v: [r for (uid, view), r in done.items() if view == v] for v in ("full", "crop")}
    result = {"benchmark": name, **aggregate(name, rows["full"]), "bad_rows": len(bad),
              "judge": getattr(judge, "model", None) or "none: unmatched answers count as wrong"}
    if rows["crop"]:
        crop_uids = {r["uid"] for r in rows["crop"]}
        result["crop_view"] = {"crop": aggregate(name, rows["crop"]),
                               "full_on_the_same_records": aggregate(name, [r for r in rows["full"]
                                                                            if r["uid"] in crop_uids])}
    (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def run(args) -> int:
    """The command: preflight every input, start one engine, run each benchmark, write the summary."""
    import sys

    from megatron_vopd.config import ConfigError, load_config, resolve_recipe
    from megatron_vopd.eval.scoring import macro, summary_table

    try:
        names = benchmark_names(args.benchmark)
        views = tuple(v.strip() for v in args.views.split(","))
        if not views or views[0] != "full" or not set(views) <= {"full", "crop"}:
            raise BenchRunError(f"--views {args.views!r}: full, or full,crop")
        if not args.data:
            raise BenchRunError("--benchmark needs --data (the benchmark's file or folder)")
        if len(args.ckpt) != 1:
            raise BenchRunError("--benchmark evaluates one --ckpt per run")
        data = Path(args.data)
        inputs = {n: data_for(n, data, len(names) > 1) for n in names}
        for n, d in inputs.items():
            benchmark_files(n, d)  # files present
            next(iter(read_benchmark(n, d)), None)  # columns present (reads one row)
        cfg = load_config(str(resolve_recipe(args.config)) if args.config else None, args.overrides)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        model_dir, model_cfg = resolve_model(Path(args.ckpt[0]), out, min_pixels=args.min_pixels,
                                             max_pixels=args.max_pixels)
        judge = None
        if args.judge:
            from megatron_vopd.eval.judge import OpenAIJudge

            judge = OpenAIJudge(args.judge, args.judge_model)
    except (BenchRunError, BenchmarkInputError, ConfigError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    from megatron_vopd.architecture import architecture
    from megatron_vopd.data.tokenizer import load_tokenizer
    from megatron_vopd.eval.plot import plot_benchmarks
    from megatron_vopd.rollout.factory import build_engine

    arch = architecture(model_cfg.arch)
    family = arch.tokenizer
    tokenizer = load_tokenizer(family)
    dtype = cfg.rollout.dtype if torch.cuda.is_available() else arch.cpu_rollout_dtype
    engine = build_engine(cfg.rollout, model_dir, dtype=dtype, tensor_parallel_size=1,
                          max_model_len=args.max_model_len or cfg.rollout.max_model_len)
    print(f"[bench] {', '.join(names)} with {model_dir} ({model_cfg.arch}, {dtype}); judge: "
          f"{judge.model if judge else 'none (unmatched answers count as wrong)'}", flush=True)
    results = {}
    engine.start()
    try:
        for n in names:
            results[n] = run_benchmark(n, inputs[n], out / n, engine=engine, tokenizer=tokenizer, family=family,
                                       max_tokens=args.max_tokens or 32768, views=views, batch_size=args.batch_size,
                                       limit=args.limit, strict=args.strict, judge=judge)
    except BenchRunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        engine.shutdown()
    summary = {"benchmarks": results, "macro": macro(results), "ckpt": str(args.ckpt[0])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    plot_benchmarks(results, out / "summary.png")
    print(summary_table(results), flush=True)
    print(f"[bench] wrote {out / 'summary.json'} and {out / 'summary.png'}", flush=True)
    return 0
