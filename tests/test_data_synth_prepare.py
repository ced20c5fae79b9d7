"""Synthetic scenes: the raw layout, deterministic, balanced, evidence 1-3% of the image; the acceptance
round trip `vopd data synth --n 200` -> `vopd data prepare` with zero rejects; the CLI."""

import argparse
import hashlib
import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from megatron_vopd.commands import data as commands
from megatron_vopd.data.schema import SCHEMA, read_records
from megatron_vopd.data.synth import PALETTE, make_scene, synthesize
from megatron_vopd.data.views import RED
from tests.data_fixtures import raw_rows, synth_dir  # noqa: F401


def vopd(*argv) -> int:
    """Run `vopd data ...` through our own parser (the real cli.py wires commands.register the same way)."""
    parser = argparse.ArgumentParser(prog="vopd")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def digest(directory) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode() + path.read_bytes())
    return h.hexdigest()


def test_cli_synth_200_then_prepare_round_trips_with_zero_rejects(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "train.parquet"
    assert vopd("data", "synth", "--out", str(raw), "--n", "200", "--seed", "7") == 0
    assert vopd("data", "prepare", "--src", str(raw), "--out", str(out), "--workers", "2",
                "--progress-every", "50") == 0
    printed = capsys.readouterr().out
    assert "prepare: 50/200 rows read" in printed and "prepare: 200/200 rows read" in printed
    assert "rows read:     200" in printed and "rows written:  200" in printed and "rows rejected: 0" in printed
    table = pq.read_table(out)
    assert table.num_rows == 200 and table.schema.remove_metadata() == SCHEMA
    records, meta = read_records(out)
    assert meta["image_root"] == str(raw.resolve())
    rows = [json.loads(x) for x in (raw / "train.jsonl").read_text().splitlines()]
    for record, row in zip(records, rows):  # every field survives the round trip
        assert (record.full_image, record.crop_image, record.original_image) == \
            (row["images"][0], row["teacher_images"][0], row["original_images"][0])
        assert (list(record.bbox), record.prompt, record.answer) == (row["bbox"], row["problem"], row["answer"])
        assert record.question == row["extra_info"]["question"] and record.source == "vopd-synth"
        assert len(record.options) == 4 and (record.image_width, record.image_height) == (448, 448)
    assert Counter(r.answer for r in records) == {"A": 50, "B": 50, "C": 50, "D": 50}  # balanced
    assert (tmp_path / "train.rejects.jsonl").read_text() == ""


def test_synth_is_deterministic_by_seed(tmp_path):
    synthesize(tmp_path / "a", 8, seed=3, size=128)
    synthesize(tmp_path / "b", 8, seed=3, size=128)
    synthesize(tmp_path / "c", 8, seed=4, size=128)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    synthesize(tmp_path / "d", 4, seed=3, size=128)  # a row does not depend on n
    assert (tmp_path / "d/train.jsonl").read_text().splitlines() == \
        (tmp_path / "a/train.jsonl").read_text().splitlines()[:4]


def test_scene_evidence_is_small_and_distractors_carry_every_option_colour():
    for index in range(40):
        scene = make_scene(seed=1, index=index, size=448)
        x1, y1, x2, y2 = scene.bbox
        assert 0.009 <= (x2 - x1) * (y2 - y1) / 448**2 <= 0.031
        pixels = np.asarray(scene.original)
        outside = pixels.copy()
        outside[max(0, y1 - 12):y2 + 12, max(0, x1 - 12):x2 + 12] = 0
        for colour in scene.qa.options:  # every option colour is also drawn outside the box
            assert (outside == PALETTE[colour]).all(axis=-1).sum() > 10, (index, colour)
        inside = pixels[y1:y2, x1:x2]
        assert (inside == PALETTE[scene.target.colour]).all(axis=-1).sum() > 10
        assert scene.qa.options[scene.qa.answer_index] == scene.target.colour


def test_synth_layout_box_and_crop(synth_dir):
    row = raw_rows(synth_dir)[0]
    boxed = np.asarray(Image.open(synth_dir / row["images"][0]))
    crop = np.asarray(Image.open(synth_dir / row["teacher_images"][0]))
    x1, y1, x2, y2 = row["bbox"]
    assert (boxed[y1 - 2, x1:x2] == RED).all() and (boxed[y1:y2, x2 + 1] == RED).all()  # red box around
    assert (crop == RED).all(axis=-1).sum() >= 2 * ((x2 - x1) + (y2 - y1))  # the crop keeps the red border
    assert row["problem"].startswith("<image>\n") and row["problem"].endswith(
        "Answer with the option's letter from the given choices.")
    assert (synth_dir / row["original_images"][0]).is_file()


def test_cli_prepare_strict_stops_and_names_the_line(tmp_path, capsys, synth_dir):
    raw = tmp_path / "raw"
    synthesize(raw, 3, seed=0, size=96)
    lines = (raw / "train.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"answer": "', '"answer": "X')
    (raw / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert vopd("data", "prepare", "--src", str(raw), "--out", str(tmp_path / "o.parquet"), "--strict",
                "--workers", "1") == 1
    err = capsys.readouterr().err
    assert f"{raw / 'train.jsonl'}:3: answer:" in err and "--strict" in err
    assert not (tmp_path / "o.parquet").exists()
    assert vopd("data", "prepare", "--src", str(raw), "--out", str(tmp_path / "o.parquet"), "--workers", "1") == 0
    out = capsys.readouterr().out
    assert "rows rejected: 1" in out and "bad_answer: 1" in out


def test_cli_errors(tmp_path, capsys):
    assert vopd("data", "prepare", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.parquet")) == 2
    assert "no such file" in capsys.readouterr().err
    assert vopd("data", "synth", "--out", str(tmp_path / "s"), "--n", "0") == 2
    assert vopd("data") == 2  # a usage error: the help goes to stderr
    assert "usage: vopd data" in capsys.readouterr().err


def test_a_bom_keeps_the_first_row_and_a_prepare_without_valid_rows_writes_nothing(tmp_path, capsys):
    raw = tmp_path / "raw"
    synthesize(raw, 2, seed=0, size=96)
    jsonl = raw / "train.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + jsonl.read_bytes())  # saved by an editor that writes a UTF-8 BOM
    assert vopd("data", "prepare", "--src", str(raw), "--out", str(tmp_path / "o.parquet"), "--workers", "1") == 0
    out = capsys.readouterr().out
    assert "rows written:  2" in out and "rows rejected: 0" in out
    jsonl.write_text(jsonl.read_text(encoding="utf-8-sig").replace('"answer": "', '"answer": "X'))
    assert vopd("data", "prepare", "--src", str(raw), "--out", str(tmp_path / "bad.parquet"), "--workers", "1") == 1
    assert "no valid row" in capsys.readouterr().err
    assert not (tmp_path / "bad.parquet").exists() and not list(tmp_path.glob("bad.parquet*"))


def test_cli_synth_writes_a_disjoint_held_out_split_in_the_demo_format(tmp_path):
    out = tmp_path / "s"
    assert vopd("data", "synth", "--out", str(out), "--n", "4", "--size", "64", "--answer-format", "color") == 0
    assert vopd("data", "synth", "--out", str(out), "--n", "4", "--size", "64", "--answer-format", "color",
                "--jsonl-name", "eval.jsonl", "--start", "1000") == 0
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(train) == len(held_out) == 4
    assert not {r["images"][0] for r in train} & {r["images"][0] for r in held_out}
    assert all("The color is" in r["problem"] for r in train + held_out)
