"""Shared fixtures of the data tests (``tests/test_data_*.py`` import what they use from here).

Session-scoped: the two real Qwen tokenizers (built once, cached on disk), a small synthetic
dataset in the raw layout and its prepared parquet. Helpers write hand-made raw rows for the
bad-input tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_vopd.data.prepare import prepare
from megatron_vopd.data.synth import synthesize
from megatron_vopd.data.tokenizer import load_tokenizer

SYNTH_N = 24
SYNTH_SIZE = 224


@pytest.fixture(scope="session")
def qwen25_tokenizer():
    return load_tokenizer("qwen2.5")


@pytest.fixture(scope="session")
def qwen35_tokenizer():
    return load_tokenizer("qwen3.5")


@pytest.fixture(scope="session")
def qwen3vl_tokenizer():
    return load_tokenizer("qwen3-vl")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """24 synthetic 224x224 scenes in the raw Vision-OPD-6K layout."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SYNTH_N, seed=0, size=SYNTH_SIZE)
    return out


@pytest.fixture(scope="session")
def prepared(synth_dir, tmp_path_factory) -> Path:
    """The synthetic scenes prepared as parquet."""
    out = tmp_path_factory.mktemp("prepared") / "train.parquet"
    summary = prepare(synth_dir, out, progress_every=0)
    assert summary.rows_written == SYNTH_N and summary.rows_rejected == 0
    return out


def raw_rows(synth_dir: Path) -> list[dict]:
    """The raw rows of the synthetic dataset."""
    return [json.loads(line) for line in (synth_dir / "train.jsonl").read_text().splitlines()]


def make_raw_dir(tmp_path: Path, synth_dir: Path, lines: list[str | dict]) -> Path:
    """A raw dataset in ``tmp_path/raw``: the synthetic image folders and a train.jsonl of ``lines``
    (dicts are JSON-encoded, strings written verbatim)."""
    raw = tmp_path / "raw"
    for sub in ("images", "teacher_images", "original_images"):
        shutil.copytree(synth_dir / sub, raw / sub)
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    (raw / "train.jsonl").write_text(text)
    return raw
