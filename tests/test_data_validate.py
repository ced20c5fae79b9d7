"""Bad input: every problem is a DataError naming the file and the line (and the key); nothing is dropped
silently. Non-RGB images are converted, not rejected."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessorPil

from megatron_vopd.data.errors import DataError
from megatron_vopd.data.loader import PromptLoader
from megatron_vopd.data.prepare import prepare
from megatron_vopd.data.schema import read_records
from megatron_vopd.data.validate import parse_options, validate_line
from tests.data_fixtures import make_raw_dir, qwen25_tokenizer, raw_rows, synth_dir  # noqa: F401


def bad_raw(tmp_path, synth_dir, break_row):
    """A raw dir with 3 good rows around one bad row (line 2); ``break_row(row, raw_dir)`` spoils it."""
    rows = raw_rows(synth_dir)[:4]
    raw = make_raw_dir(tmp_path, synth_dir, rows)
    bad = break_row(dict(rows[1]), raw)
    lines = (raw / "train.jsonl").read_text().splitlines()
    lines[1] = bad if isinstance(bad, str) else json.dumps(bad)
    (raw / "train.jsonl").write_text("\n".join(lines) + "\n")
    return raw


def expect_error(tmp_path, synth_dir, break_row, reason, *fragments):
    """The spoiled row fails with ``reason``: --strict raises naming file:2, default rejects it and goes on."""
    raw = bad_raw(tmp_path, synth_dir, break_row)
    jsonl = raw / "train.jsonl"
    with pytest.raises(DataError) as info:
        prepare(raw, tmp_path / "strict.parquet", strict=True, progress_every=0)
    message = str(info.value)
    assert message.startswith(f"{jsonl}:2: "), message  # the file and the 1-based line
    assert info.value.reason == reason and info.value.line == 2
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not (tmp_path / "strict.parquet").exists()  # --strict leaves no output behind

    summary = prepare(raw, tmp_path / "ok.parquet", progress_every=0)
    assert (summary.rows_read, summary.rows_written, dict(summary.rejected)) == (4, 3, {reason: 1})
    rejects = [json.loads(x) for x in summary.rejects_file.read_text().splitlines()]
    assert [(r["line"], r["reason"], r["file"]) for r in rejects] == [(2, reason, str(jsonl))]
    assert rejects[0]["message"] == message
    assert [r.line for r in read_records(tmp_path / "ok.parquet")[0]] == [1, 3, 4]
    return message


def test_malformed_json_line(tmp_path, synth_dir):
    expect_error(tmp_path, synth_dir, lambda row, raw: '{"images": ["images/x.png"], "bbox": [1, 2', "malformed_json",
                 "malformed JSON")


def test_json_that_is_not_an_object(tmp_path, synth_dir):
    expect_error(tmp_path, synth_dir, lambda row, raw: "[1, 2, 3]", "malformed_json", "expected a JSON object")


def test_missing_image_file(tmp_path, synth_dir):
    def spoil(row, raw):
        (raw / row["images"][0]).unlink()
        return row
    message = expect_error(tmp_path, synth_dir, spoil, "missing_image", "images[0]", "image file not found")
    assert "synth_000001.png" in message  # names the image file too


def test_missing_teacher_image_file(tmp_path, synth_dir):
    def spoil(row, raw):
        (raw / row["teacher_images"][0]).unlink()
        return row
    expect_error(tmp_path, synth_dir, spoil, "missing_image", "teacher_images[0]")


def test_truncated_image(tmp_path, synth_dir):
    def spoil(row, raw):
        path = raw / row["images"][0]
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return row
    message = expect_error(tmp_path, synth_dir, spoil, "bad_image", "images[0]", "cannot decode image")
    assert "synth_000001.png" in message


def test_not_an_image(tmp_path, synth_dir):
    def spoil(row, raw):
        (raw / row["images"][0]).write_text("hello")
        return row
    expect_error(tmp_path, synth_dir, spoil, "bad_image", "cannot decode image")


def test_box_outside_the_image(tmp_path, synth_dir):
    expect_error(tmp_path, synth_dir, lambda row, raw: {**row, "bbox": [200, 200, 240, 230]}, "bad_bbox",
                 "bbox: ", "outside the 224x224 image")


def test_box_with_x2_before_x1(tmp_path, synth_dir):
    expect_error(tmp_path, synth_dir, lambda row, raw: {**row, "bbox": [50, 20, 40, 60]}, "bad_bbox",
                 "bbox: [50, 20, 40, 60] has x2 < x1")


@pytest.mark.parametrize("bbox", [[1, 2, 3], "1,2,3,4", [1.5, 2, 30, 40], [10, 10, 10, 40], [10, 40, 20, 30]])
def test_malformed_boxes(tmp_path, synth_dir, bbox):
    expect_error(tmp_path, synth_dir, lambda row, raw: {**row, "bbox": bbox}, "bad_bbox", "bbox: ")


@pytest.mark.parametrize("answer", ["E", "a", "AB", 1, None, ""])
def test_answer_outside_a_to_d(tmp_path, synth_dir, answer):
    expect_error(tmp_path, synth_dir, lambda row, raw: {**row, "answer": answer}, "bad_answer",
                 "answer: ", "is not one of the option letters A, B, C, D")


def test_missing_key(tmp_path, synth_dir):
    expect_error(tmp_path, synth_dir, lambda row, raw: {k: v for k, v in row.items() if k != "problem"},
                 "missing_key", "problem: required key is missing")


@pytest.mark.parametrize("problem,why", [
    ("What colour?\nA. red\nB. blue", "<image>"),
    ("<image><image>\nQ\nA. x\nB. y", "exactly one <image>"),
    ("<image>\nQ with no options", "no options"),
    ("<image>\nQ\nA. x\nC. y", "option C out of order"),
    ("<image>\nQ\nA. x\n\nAnswer.", "1 options found"),
])
def test_bad_problem(tmp_path, synth_dir, problem, why):
    expect_error(tmp_path, synth_dir, lambda row, raw: {**row, "problem": problem}, "bad_problem", why)


def test_non_rgb_modes_are_converted_not_rejected(tmp_path, synth_dir, qwen25_tokenizer):
    rows = raw_rows(synth_dir)[:3]
    raw = make_raw_dir(tmp_path, synth_dir, rows)
    for row, mode in zip(rows, ("L", "RGBA", "P")):
        for key in ("images", "teacher_images"):
            path = raw / row[key][0]
            image = Image.open(path)
            (image.convert(mode) if mode != "P" else image.quantize(32)).save(path)
            assert Image.open(path).mode == mode
    summary = prepare(raw, tmp_path / "modes.parquet", progress_every=0)
    assert (summary.rows_written, summary.rows_rejected) == (3, 0)
    loader = PromptLoader.from_file(tmp_path / "modes.parquet", tokenizer=qwen25_tokenizer, batch_size=3, shuffle=False)
    batch = next(iter(loader))
    hf = Qwen2VLImageProcessorPil()
    for prompt, row in zip(batch.prompts, rows):
        for view, key in (("full", "images"), ("crop", "teacher_images")):
            expected = hf([Image.open(raw / row[key][0])], return_tensors="np")  # transformers converts to RGB
            np.testing.assert_array_equal(getattr(prompt, view).pixel_values, expected["pixel_values"])


def test_blank_lines_are_reported_not_rows(tmp_path, synth_dir):
    rows = raw_rows(synth_dir)[:2]
    raw = make_raw_dir(tmp_path, synth_dir, [rows[0], "", "   ", rows[1]])
    summary = prepare(raw, tmp_path / "b.parquet", progress_every=0)
    assert (summary.rows_read, summary.rows_written, summary.blank_lines) == (2, 2, 2)
    assert [r.line for r in read_records(tmp_path / "b.parquet")[0]] == [1, 4]  # real line numbers kept
    assert "blank lines skipped: 2" in summary.format()


def test_options_parse_with_continuation_lines():
    options, start, end = parse_options("<image>\nQ?\n\nA. one\nB. two\nlines\nC. three\n\nAnswer.")
    assert options == ("one", "two\nlines", "three") and (start, end) == (3, 7)


def test_validate_line_names_file_line_and_key(tmp_path, synth_dir):
    row = {**raw_rows(synth_dir)[0], "answer": "Z"}
    with pytest.raises(DataError, match=r"^/x/train.jsonl:7: answer: 'Z' is not one of"):
        validate_line(json.dumps(row), file="/x/train.jsonl", line=7, root=synth_dir)


def test_absolute_and_escaping_image_paths(tmp_path, synth_dir):
    def absolute(row, raw):
        return {**row, "images": [str(raw / row["images"][0])]}
    expect_error(tmp_path / "a", synth_dir, absolute, "bad_value", "images:", "is absolute: give image paths relative")

    def escaping(row, raw):
        return {**row, "teacher_images": ["../elsewhere/crop.png"]}
    expect_error(tmp_path / "b", synth_dir, escaping, "bad_value", "teacher_images:", "leaves the dataset directory")


def test_a_directory_named_as_an_image_and_a_missing_original(tmp_path, synth_dir):
    def directory(row, raw):
        (raw / "images" / "adir").mkdir()
        return {**row, "images": ["images/adir"]}
    expect_error(tmp_path / "a", synth_dir, directory, "missing_image", "is a directory, not an image file")

    def original(row, raw):
        return {**row, "original_images": ["originals/sa_1.jpg"]}
    expect_error(tmp_path / "b", synth_dir, original, "missing_image", "original_images[0]", "image file not found")


def test_an_answer_contradicting_extra_info(tmp_path, synth_dir):
    def contradict(row, raw):
        other = "B" if row["answer"] != "B" else "C"
        return {**row, "extra_info": {**(row.get("extra_info") or {}), "answer": other}}
    expect_error(tmp_path, synth_dir, contradict, "bad_answer", "extra_info.answer:", "contradicts extra_info.answer")


def test_duplicate_rows_are_kept_and_reported(tmp_path, synth_dir):
    rows = raw_rows(synth_dir)[:3]
    raw = make_raw_dir(tmp_path, synth_dir, [*rows, rows[0]])
    summary = prepare(raw, tmp_path / "o.parquet", progress_every=0)
    assert summary.rows_written == 4 and summary.duplicates == [(4, 1)]
    assert "warning: 1 duplicate row(s), kept (same image and problem as an earlier row: line 4 = line 1)" in \
        summary.format()


def test_an_image_the_processor_would_refuse_is_rejected_at_prepare(tmp_path, synth_dir):
    def sliver(row, raw):
        Image.new("RGB", (402, 2), "white").save(raw / "images" / "sliver.png")
        return {**row, "teacher_images": ["images/sliver.png"]}
    expect_error(tmp_path, synth_dir, sliver, "bad_image", "teacher_images[0]:", "402x2",
                 "refuses an aspect ratio over 200:1")
