"""The paper's benchmarks as users download them: readers that stream their files into ``BenchRecord``s
with the reference evaluator's prompt for each.

    for item in read_benchmark("hrbench-4k", "/data/HR-Bench"):     # a file, or a folder to search
        if isinstance(item, BadRow): print(item)                     # "file:row: reason", counted by the caller
        else: item.query, item.gt, item.image                        # prompt text, truth, encoded image bytes

Formats (columns as the files ship them; parquet is read in batches, never whole):

- ``vstar``: lmms-lab/vstar-bench parquet: ``image`` {bytes, path}, ``text``, ``label``, ``question_id``, ``category``;
  with the official annotation JSONs (penghao-wu/vstar) anywhere under the folder, a row whose image path
  has an annotation's stem gets the crop around its boxes (``evidence_crop``; ``--views full,crop``);
- ``zoombench``: inclusionAI/ZoomBench parquet: ``id``, ``query``, ``response``, ``image``, ``crop_image`` (nullable);
- ``hrbench-4k`` / ``hrbench-8k``: DreamMr/HR-Bench ``hr_bench_{4k,8k}.parquet``: ``index``, ``question``, ``A``-``D``,
  ``answer``, ``category``, ``cycle_category``, ``image`` (a base64 JPEG string);
- ``mme-realworld`` / ``-cn`` / ``-lite``: the lmms-eval parquet shards: ``bytes`` (base64), ``index``, ``question``,
  ``multi-choice options``, ``answer``, ``category``, ``l2-category``;
- ``mmstar`` (``image`` raw bytes), ``pope`` (``image`` {bytes, path}), ``cv-bench`` (``test_2d``/``test_3d``
  parquet, keyed by type and idx) and ``mmvp`` (``Questions.csv`` + ``MMVP Images/<Index>.jpg``).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

VSTAR_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
MME_EN = ("The choices are listed below:\n", "\nSelect the best answer to the above multiple-choice question based on "
          "the image. Respond with only the letter (A, B, C, D, or E) of the correct option.\nThe best answer is: ")
MME_CN = ("选项如下所示:\n", "\n根据图像选择上述多项选择题的最佳答案。只需回答正确选项的字母（A, B, C, D 或 E）。\n最佳答案为： ")
POPE_SUFFIX = "\nAnswer the question using a single word or phrase."


@dataclass
class BenchRecord:
    benchmark: str
    uid: str
    query: str  # the prompt text, as the reference builds it (the image goes before it)
    gt: str
    image: bytes  # the encoded image as shipped (JPEG, PNG, WebP, ...)
    where: str  # "file:row" (row 0-based within the file)
    crop: bytes | None = None  # the benchmark's own evidence crop (ZoomBench's crop_image)
    meta: dict = field(default_factory=dict)  # the fields result.json breaks accuracy down by


@dataclass
class BadRow:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class BenchmarkInputError(ValueError):
    """The benchmark's files cannot be found or lack a column: nothing can be read."""


def image_bytes(value, column: str) -> bytes:
    """The encoded image of a cell: a {bytes, path} struct, raw bytes or a base64 string."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value)
    if isinstance(value, str) and value:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"{column}: not a base64 image string ({e})") from None
    raise ValueError(f"{column}: no image bytes")


def check_image(data: bytes, column: str) -> None:
    """Raise ValueError naming the column unless ``data`` decodes as an image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds
        raise ValueError(f"{column}: the image does not decode ({type(e).__name__}: {e})") from None


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def _options(letters_values) -> str:
    return "\n".join(f"({letter}) {value}" for letter, value in letters_values if value != "")


# --- one function per format: row dict -> (uid, query, gt, image column, meta) ---------------------------

def _vstar(row, name):
    query = _text(row, "text").strip()
    if VSTAR_SUFFIX.strip() not in query:
        query += VSTAR_SUFFIX
    return f"vstar:question_id:{row['question_id']}", query, _text(row, "label").strip().upper(), "image", \
        {"category": row.get("category")}


def _zoombench(row, name):
    return (f"zoombench:id:{row['id']}", _text(row, "query").strip(), _text(row, "response").strip(), "image",
            {"question_type": row.get("question_type")})


def _hrbench(row, name):
    query = f"{_text(row, 'question')} Select from the following choices.\n" + _options(
        (c, _text(row, c)) for c in "ABCD")
    cycle = row.get("cycle_category")
    return (f"{name}:index:{row['index']}", query, _text(row, "answer").strip(), "image",
            {"category": row.get("category"), "cycle": None if cycle is None else int(cycle)})


def _mme(row, name):
    head, tail = MME_CN if name == "mme-realworld-cn" else MME_EN
    options = [str(o).strip() for o in (row.get("multi-choice options") or []) if str(o).strip()]
    query = f"{_text(row, 'question').strip()} {head}" + "\n".join(options) + tail
    category = row.get("category")
    return (f"{name}:index:{row['index']}", query, _text(row, "answer").strip(), "bytes",
            {"task": str(category).split("/")[0] if category else None, "category": category,
             "l2_category": row.get("l2-category")})


def _mmstar(row, name):
    return (f"mmstar:index:{row['index']}", _text(row, "question"), _text(row, "answer").strip(), "image",
            {"category": row.get("category"), "l2_category": row.get("l2_category")})


def _pope(row, name):
    return (f"pope:question_id:{row['question_id']}", _text(row, "question") + POPE_SUFFIX,
            _text(row, "answer").strip().lower(), "image", {"category": row.get("category")})


def _cvbench(row, name):
    return (f"cv-bench:{row['type']}:{row['idx']}", _text(row, "prompt"), _text(row, "answer").strip(), "image",
            {"type": row.get("type"), "task": row.get("task"), "source": row.get("source")})


@dataclass(frozen=True)
class Format:
    pattern: str  # glob under the data folder
    columns: tuple[str, ...]  # required
    optional: tuple[str, ...]
    row: object  # (row, name) -> (uid, query, gt, image column, meta)


FORMATS = {
    "vstar": Format("**/*.parquet", ("image", "text", "label", "question_id"), ("category",), _vstar),
    "zoombench": Format("**/*.parquet", ("id", "query", "response", "image"), ("crop_image", "question_type"),
                        _zoombench),
    "hrbench-4k": Format("**/*4k*.parquet", ("index", "question", "answer", "image", "A", "B", "C", "D"),
                         ("category", "cycle_category"), _hrbench),
    "hrbench-8k": Format("**/*8k*.parquet", ("index", "question", "answer", "image", "A", "B", "C", "D"),
                         ("category", "cycle_category"), _hrbench),
    "mme-realworld": Format("**/*.parquet", ("bytes", "index", "question", "multi-choice options", "answer"),
                            ("category", "l2-category"), _mme),
    "mme-realworld-cn": Format("**/*.parquet", ("bytes", "index", "question", "multi-choice options", "answer"),
                               ("category", "l2-category"), _mme),
    "mme-realworld-lite": Format("**/*.parquet", ("bytes", "index", "question", "multi-choice options", "answer"),
                                 ("category", "l2-category"), _mme),
    "mmstar": Format("**/*.parquet", ("index", "question", "answer", "image"), ("category", "l2_category"), _mmstar),
    "pope": Format("**/*.parquet", ("question_id", "question", "answer", "image"), ("category",), _pope),
    "cv-bench": Format("**/test_[23]d.parquet", ("idx", "type", "task", "image", "prompt", "answer"), ("source",),
                       _cvbench),
}
NAMES = (*FORMATS, "mmvp")


def benchmark_files(name: str, data: str | Path) -> list[Path]:
    """The files of benchmark ``name`` at ``data`` (a file, or a folder searched by the format's pattern)."""
    if name not in NAMES:
        raise BenchmarkInputError(f"unknown benchmark {name!r}; known: {', '.join(NAMES)}")
    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise BenchmarkInputError(f"{name}: {data}: no such file or folder")
    files = sorted(data.glob("**/Questions.csv" if name == "mmvp" else FORMATS[name].pattern))
    if not files:
        what = "Questions.csv" if name == "mmvp" else FORMATS[name].pattern
        raise BenchmarkInputError(f"{name}: no {what} under {data}")
    return files


def count_rows(name: str, data: str | Path) -> int:
    """Rows in the benchmark's files, from the parquet footers (or the CSV's lines) without reading them."""
    files = benchmark_files(name, data)
    if name == "mmvp":
        return sum(max(0, len(f.read_text(encoding="utf-8-sig").splitlines()) - 1) for f in files)
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def read_benchmark(name: str, data: str | Path, *, batch_rows: int = 32) -> Iterator[BenchRecord | BadRow]:
    """Every row of the benchmark's files, in file order: a BenchRecord, or a BadRow saying what is wrong
    with it. Missing files or columns raise BenchmarkInputError before any row is read."""
    files = benchmark_files(name, data)
    if name == "mmvp":
        for path in files:
            yield from _read_mmvp(path)
        return
    import pyarrow.parquet as pq

    fmt = FORMATS[name]
    boxes = vstar_boxes(Path(data) if Path(data).is_dir() else Path(data).parent) if name == "vstar" else {}
    for path in files:
        pf = pq.ParquetFile(path)
        have = set(pf.schema_arrow.names)
        missing = [c for c in fmt.columns if c not in have]
        if missing:
            raise BenchmarkInputError(f"{path}: missing column(s) {', '.join(missing)} of {name} "
                                      f"(has: {', '.join(sorted(have))})")
        columns = [*fmt.columns, *(c for c in fmt.optional if c in have)]
        i = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            for row in batch.to_pylist():
                yield _record(name, fmt, row, f"{path}:{i}", boxes)
                i += 1


def vstar_boxes(root: Path) -> dict[str, list]:
    """V*'s evidence boxes from the official annotation JSONs (penghao-wu/vstar: one ``<image stem>.json``
    with ``bbox`` = [[x, y, w, h], ...] per image) anywhere under ``root``: image stem -> boxes."""
    import json

    out = {}
    for path in sorted(root.rglob("*.json")):
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not an annotation (the download's own metadata files)
        if isinstance(meta, dict) and "bbox" in meta:
            out[path.stem] = meta["bbox"]
    return out


def evidence_crop(image: bytes, boxes, *, margin: float = 0.5, min_size: int = 224) -> bytes:
    """The crop around the union of ``boxes`` ([x, y, w, h] each), with the training crop's margin and
    minimum size (``data.views.crop_box``), as PNG bytes."""
    from PIL import Image

    from megatron_vopd.data.views import crop_box

    try:
        xywh = [[float(v) for v in b] for b in boxes]
        if not xywh or any(len(b) != 4 or b[2] <= 0 or b[3] <= 0 for b in xywh):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"bbox: {boxes!r} is not a list of [x, y, w, h] with w, h > 0") from None
    with Image.open(io.BytesIO(image)) as im:
        w, h = im.size
        union = (min(b[0] for b in xywh), min(b[1] for b in xywh), max(b[0] + b[2] for b in xywh),
                 max(b[1] + b[3] for b in xywh))
        if union[0] < 0 or union[1] < 0 or union[2] > w + 1 or union[3] > h + 1:
            raise ValueError(f"bbox: {boxes!r} lies outside the {w}x{h} image")
        buf = io.BytesIO()
        im.convert("RGB").crop(crop_box([round(v) for v in union], (w, h), margin=margin, min_size=min_size,
                                        border=0)).save(buf, "PNG")
    return buf.getvalue()


def _record(name, fmt, row, where, boxes=None) -> BenchRecord | BadRow:
    try:
        uid, query, gt, column, meta = fmt.row(row, name)
        if not gt:
            raise ValueError("the answer is empty")
        _check_answer(name, gt, row)
        image = image_bytes(row.get(column), column)
        check_image(image, column)
        crop, cell = None, row.get("crop_image")
        if cell and (cell.get("bytes") if isinstance(cell, dict) else True):  # a crop shipped with the row
            crop = image_bytes(cell, "crop_image")
            check_image(crop, "crop_image")
        cell = row.get("image")
        stem = Path(cell.get("path") or "").stem if isinstance(cell, dict) else ""
        if boxes and stem in boxes:  # V* with its official annotations beside the parquet
            crop = evidence_crop(image, boxes[stem])
    except (ValueError, KeyError, TypeError) as e:
        return BadRow(where, str(e))
    return BenchRecord(name, uid, query, gt, image, where, crop, meta)


def _check_answer(name: str, gt: str, row: dict) -> None:
    """A multiple-choice truth must name one of the record's options (else no answer could be right)."""
    from megatron_vopd.eval.scoring import MCQ, extract_mcq_option

    if name not in MCQ:
        return
    letter = extract_mcq_option(gt)
    if letter is None:
        raise ValueError(f"answer: {gt!r} is not an option letter")
    if name.startswith("hrbench") and not _text(row, letter):
        raise ValueError(f"answer: {gt!r} names option {letter}, which is empty")
    if name.startswith("mme-realworld"):
        given = [str(o).strip()[1:2] for o in (row.get("multi-choice options") or []) if str(o).strip()]
        if letter not in given:
            raise ValueError(f"answer: {gt!r} is not among the options {', '.join(given) or '(none)'}")


def _read_mmvp(path: Path) -> Iterator[BenchRecord | BadRow]:
    images = path.parent / "MMVP Images"
    with open(path, newline="", encoding="utf-8-sig") as f:
        for i, row in enumerate(csv.DictReader(f)):
            where = f"{path}:{i + 2}"  # the header is line 1
            try:
                index = row["Index"].strip()
                image = images / f"{index}.jpg"
                if not image.is_file():
                    raise ValueError(f"Index {index}: no image {image}")
                data = image.read_bytes()
                check_image(data, str(image))
                yield BenchRecord("mmvp", f"mmvp:index:{index}", f"{row['Question']} {row['Options']}",
                                  row["Correct Answer"].strip(), data, where)
            except (KeyError, ValueError) as e:
                yield BadRow(where, f"missing column {e}" if isinstance(e, KeyError) else str(e))
