"""``vopd data prepare``: raw Vision-OPD-6K (``train.jsonl`` + image folders) -> one validated parquet file.

Every line is validated (``validate.py``) and written under ``schema.SCHEMA`` with pyarrow. Nothing
is dropped silently:

- default: a bad row is written to the rejects file (``<out>.rejects.jsonl``: file, line, key, reason,
  message) and counted; the run goes on;
- ``strict=True``: the first bad row stops the run with its ``DataError``; no parquet file is left.

Blank lines are not rows; they are counted and reported. A summary (rows read, written, rejected by
reason) is printed at the end, and a progress line every ``progress_every`` rows. Image checks
(full decode by default) can run in ``workers`` processes; the output order is the input order.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow.parquet as pq

from megatron_vopd.data.errors import REASONS, DataError
from megatron_vopd.data.schema import SCHEMA, Record, file_metadata, to_table
from megatron_vopd.data.validate import CheckImages, validate_line

WRITE_BATCH = 1024  # rows per parquet row group


@dataclass
class PrepareSummary:
    """What a prepare run did."""

    out: Path
    rejects_file: Path | None
    rows_read: int = 0
    rows_written: int = 0
    blank_lines: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    duplicates: list = field(default_factory=list)  # (line, line of the earlier row with the same image and problem)
    seconds: float = 0.0

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    def format(self) -> str:
        """Human-readable summary lines."""
        lines = [f"rows read:     {self.rows_read}", f"rows written:  {self.rows_written}  -> {self.out}",
                 f"rows rejected: {self.rows_rejected}" + (f"  -> {self.rejects_file}" if self.rows_rejected else "")]
        lines += [f"  {reason}: {n}  ({REASONS[reason]})" for reason, n in sorted(self.rejected.items())]
        if self.blank_lines:
            lines.append(f"blank lines skipped: {self.blank_lines}")
        if self.duplicates:
            shown = ", ".join(f"line {a} = line {b}" for a, b in self.duplicates[:5])
            lines.append(f"warning: {len(self.duplicates)} duplicate row(s), kept (same image and problem as an earlier "
                         f"row: {shown}{', ...' if len(self.duplicates) > 5 else ''})")
        lines.append(f"time: {self.seconds:.1f} s")
        return "\n".join(lines)


def default_rejects_path(out: str | Path) -> Path:
    """``<out without .parquet>.rejects.jsonl``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".parquet") + ".rejects.jsonl")


def _check(job: tuple) -> Record | DataError:
    text, file, line, root, source, check_images = job
    try:
        return validate_line(text, file=file, line=line, root=root, source=source, check_images=check_images)
    except DataError as e:
        return e


def _jobs(jsonl: Path, root: Path, source: str, check_images: str, summary: PrepareSummary) -> Iterator[tuple]:
    with open(jsonl, encoding="utf-8-sig", errors="surrogateescape") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                summary.blank_lines += 1
                continue
            yield text, str(jsonl), number, str(root), source, check_images


def prepare(src: str | Path, out: str | Path, *, jsonl: str = "train.jsonl", strict: bool = False,
            rejects: str | Path | None = None, source: str = "vision-opd-6k", check_images: CheckImages = "decode",
            workers: int = 1, progress_every: int = 500, log: Callable[[str], None] = print) -> PrepareSummary:
    """Convert ``src/<jsonl>`` (image paths relative to ``src``) to the parquet file ``out``.

    Raises ``DataError`` on the first bad row when ``strict``; ``FileNotFoundError`` without the jsonl."""
    src, out = Path(src).resolve(), Path(out)
    path = src / jsonl
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected the raw Vision-OPD-6K layout under {src})")
    rejects_path = None if strict else Path(rejects) if rejects else default_rejects_path(out)
    summary = PrepareSummary(out=out, rejects_file=rejects_path)
    with open(path, "rb") as f:
        total = sum(1 for _ in f)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    start = time.perf_counter()
    writer = pq.ParquetWriter(tmp, SCHEMA.with_metadata(file_metadata(src, path)))
    rejects_f = open(rejects_path, "w", encoding="utf-8") if rejects_path else None
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    batch: list[Record] = []
    seen: dict[tuple[str, str], int] = {}  # (image, problem) -> first line
    try:
        jobs = _jobs(path, src, source, check_images, summary)
        results = pool.map(_check, jobs, chunksize=8) if pool else map(_check, jobs)
        for result in results:
            summary.rows_read += 1
            if isinstance(result, DataError):
                if strict:
                    raise result
                summary.rejected[result.reason] += 1
                rejects_f.write(json.dumps({"file": str(result.file), "line": result.line, "key": result.key,
                                            "reason": result.reason, "message": str(result)}) + "\n")
            else:
                first = seen.setdefault((result.full_image, result.prompt), result.line)
                if first != result.line:
                    summary.duplicates.append((result.line, first))
                batch.append(result)
                if len(batch) >= WRITE_BATCH:
                    writer.write_table(to_table(batch))
                    summary.rows_written += len(batch)
                    batch = []
            if progress_every and summary.rows_read % progress_every == 0:
                rate = summary.rows_read / max(time.perf_counter() - start, 1e-9)
                log(f"prepare: {summary.rows_read}/{total} rows read, {summary.rows_written + len(batch)} valid, "
                    f"{summary.rows_rejected} rejected ({rate:.0f} rows/s)")
        if batch:
            writer.write_table(to_table(batch))
            summary.rows_written += len(batch)
        writer.close()
        if summary.rows_written:
            os.replace(tmp, out)
        else:  # no valid row: nothing is written (the summary and the exit code say why)
            tmp.unlink(missing_ok=True)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        if rejects_f:
            rejects_f.close()
    summary.seconds = time.perf_counter() - start
    return summary
