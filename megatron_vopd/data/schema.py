"""The prepared dataset: one parquet row per prompt, under a fixed pyarrow schema.

``vopd data prepare`` writes it; the loader reads it. Image paths are stored as in the raw
``train.jsonl`` (relative to the dataset directory); the directory itself is recorded in the file's
metadata (``vopd.image_root``) and can be overridden (``data.image_root``) when the images move.

| column | type | meaning |
| --- | --- | --- |
| ``id`` | string | ``<source>:<line>``, unique within a file |
| ``source`` | string | data source (``vision-opd-6k``, ``vopd-synth``, or the row's ``data_source``) |
| ``line`` | int64 | 1-based line of the row in the raw jsonl |
| ``full_image`` | string | the full image with the red evidence box (``images[0]``) |
| ``crop_image`` | string, null | the shipped crop (``teacher_images[0]``); null: cut from ``bbox`` |
| ``original_image`` | string, null | the image before the box was drawn (``original_images[0]``), informational |
| ``image_width``, ``image_height`` | int32 | size of the full image in pixels |
| ``bbox`` | fixed_size_list<int32>[4] | evidence box x1, y1, x2, y2 in full-image pixels (x2, y2 exclusive) |
| ``prompt`` | string | the problem text, one ``<image>`` placeholder, options and instruction included |
| ``question`` | string | the question alone (``extra_info.question``, else parsed from the prompt) |
| ``options`` | list<string> | option texts in letter order (A, B, ...) |
| ``answer`` | string | the correct letter, A-D |
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "2"  # 2: the view columns are full_image / crop_image
META_SCHEMA_VERSION = b"vopd.schema_version"
META_IMAGE_ROOT = b"vopd.image_root"
META_SOURCE_FILE = b"vopd.source_file"

SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("line", pa.int64(), nullable=False),
    pa.field("full_image", pa.string(), nullable=False),
    pa.field("crop_image", pa.string(), nullable=True),
    pa.field("original_image", pa.string(), nullable=True),
    pa.field("image_width", pa.int32(), nullable=False),
    pa.field("image_height", pa.int32(), nullable=False),
    pa.field("bbox", pa.list_(pa.int32(), 4), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("options", pa.list_(pa.string()), nullable=False),
    pa.field("answer", pa.string(), nullable=False),
])


@dataclass(frozen=True)
class Record:
    """One validated prompt (a parquet row)."""

    id: str
    source: str
    line: int
    full_image: str
    crop_image: str | None
    original_image: str | None
    image_width: int
    image_height: int
    bbox: tuple[int, int, int, int]
    prompt: str
    question: str
    options: tuple[str, ...]
    answer: str

    @property
    def answer_index(self) -> int:
        """0 for A, 1 for B, ..."""
        return ord(self.answer) - ord("A")


COLUMNS = [f.name for f in fields(Record)]
assert COLUMNS == SCHEMA.names, "Record and SCHEMA must list the same columns in the same order"


def to_table(records: Iterable[Record]) -> pa.Table:
    """Records -> a table under ``SCHEMA``."""
    rows = [asdict(r) for r in records]
    return pa.Table.from_pydict({name: [row[name] for row in rows] for name in COLUMNS}, schema=SCHEMA)


def file_metadata(image_root: str | Path, source_file: str | Path) -> dict[bytes, bytes]:
    """The schema metadata written with a prepared file."""
    return {META_SCHEMA_VERSION: SCHEMA_VERSION.encode(), META_IMAGE_ROOT: str(image_root).encode(),
            META_SOURCE_FILE: str(source_file).encode()}


def read_records(path: str | Path) -> tuple[list[Record], dict[str, str]]:
    """(records, metadata) of a prepared parquet file; metadata keys without the ``vopd.`` prefix."""
    table = pq.read_table(path)
    if table.schema.remove_metadata() != SCHEMA:
        raise ValueError(f"{path}: not a prepared Vision-OPD file (schema differs from megatron_vopd.data.schema."
                         f"SCHEMA); run `vopd data prepare` again")
    meta = {k.decode().removeprefix("vopd."): v.decode() for k, v in (table.schema.metadata or {}).items()
            if k.startswith(b"vopd.")}
    records = [Record(**{**row, "bbox": tuple(row["bbox"]), "options": tuple(row["options"])})
               for row in table.to_pylist()]
    return records, meta


def describe() -> str:
    """The schema as JSON lines (name, type, nullable), for humans."""
    return "\n".join(json.dumps({"name": f.name, "type": str(f.type), "nullable": f.nullable}) for f in SCHEMA)
