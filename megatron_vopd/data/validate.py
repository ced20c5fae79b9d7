"""Validation of one raw Vision-OPD-6K row (a ``train.jsonl`` line) into a ``Record``.

A raw row (see docs/method.md, "Data") is a JSON object with ``images`` ([path] of the full image with the red
box), ``teacher_images`` ([path] of the crop, optional), ``original_images`` ([path], optional),
``bbox`` ([x1, y1, x2, y2] integer pixels), ``problem`` (``<image>\\n{question}\\n\\n...\\n\\nA. ...\\nB. ...``),
``answer`` (a letter A-D), ``extra_info`` ({answer, question}, optional) and optionally
``data_source``. Checks, each failing with a ``DataError`` naming the file, the line and the key:

- the line is a JSON object (``malformed_json``); required keys are present (``missing_key``);
- image lists hold exactly one path; the files exist (``missing_image``) and decode (``bad_image``;
  ``check_images="header"`` reads headers only). Any PIL mode is accepted (converted to RGB later);
- ``bbox`` is 4 integers with x1 < x2, y1 < y2, inside the student image (``bad_bbox``);
- ``problem`` has exactly one ``<image>`` and options ``A.``, ``B.``, ... (2 to 4) (``bad_problem``);
- ``answer`` is one of the option letters, A-D (``bad_answer``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from megatron_vopd.data.errors import DataError
from megatron_vopd.data.image_files import probe, resolve
from megatron_vopd.data.schema import Record

LETTERS = "ABCD"
IMAGE_PLACEHOLDER = "<image>"
_OPTION = re.compile(r"^([A-Z])\.(?:\s(.*))?$")

CheckImages = Literal["decode", "header"]


def parse_line(text: str, *, file: str | Path, line: int) -> dict[str, Any]:
    """The JSON object on one line, or ``DataError(reason="malformed_json")``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e.msg} at column {e.colno}", file=file, line=line,
                        reason="malformed_json") from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", file=file, line=line,
                        reason="malformed_json")
    return obj


def parse_options(problem: str) -> tuple[tuple[str, ...], int, int]:
    """(option texts, first line index, end line index) of the ``A. ...`` block of a problem.

    Options are consecutive lines starting ``A.``, ``B.``, ...; a following line that is neither the
    next letter nor empty continues the previous option. Raises ``DataError(reason="bad_problem")``."""
    lines = problem.split("\n")
    start = next((i for i, s in enumerate(lines) if _OPTION.match(s) and s.startswith("A.")), None)
    if start is None:
        raise DataError("no options found (expected lines 'A. ...', 'B. ...')", key="problem", reason="bad_problem")
    options: list[str] = []
    end = start
    for i in range(start, len(lines)):
        m = _OPTION.match(lines[i])
        if m and m.group(1) == chr(ord("A") + len(options)):
            options.append((m.group(2) or "").strip())
        elif lines[i].strip() == "":
            break
        elif m and m.group(1) in LETTERS:
            raise DataError(f"option {m.group(1)} out of order (after {chr(ord('A') + len(options) - 1)})",
                            key="problem", reason="bad_problem")
        else:
            options[-1] += "\n" + lines[i]
        end = i + 1
    if not 2 <= len(options) <= len(LETTERS):
        raise DataError(f"{len(options)} options found, expected 2 to {len(LETTERS)} (A-D)", key="problem",
                        reason="bad_problem")
    if any(not o for o in options):
        raise DataError("an option has no text", key="problem", reason="bad_problem")
    return tuple(options), start, end


def _question_from_problem(problem: str, option_start: int) -> str:
    head = "\n".join(problem.split("\n")[:option_start]).replace(IMAGE_PLACEHOLDER, "")
    parts = [p.strip() for p in head.split("\n\n") if p.strip()]
    return parts[0] if parts else ""


def _one_path(obj: dict, key: str, *, required: bool) -> str | None:
    """The single path of an image list (``[path]``; a bare string is accepted)."""
    if key not in obj or obj[key] is None or obj[key] == []:
        if required:
            raise DataError("required key is missing", key=key, reason="missing_key")
        return None
    value = obj[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], str) or not value[0]:
        raise DataError(f"expected a list with one image path, got {value!r}", key=key, reason="bad_value")
    path = Path(value[0])
    if path.is_absolute():  # the dataset could not move, and data.image_root would not apply
        raise DataError(f"{value[0]} is absolute: give image paths relative to the dataset directory", key=key,
                        reason="bad_value")
    if ".." in path.parts:
        raise DataError(f"{value[0]} leaves the dataset directory", key=key, reason="bad_value")
    return value[0]


def _bbox(value: Any) -> tuple[int, int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise DataError(f"expected [x1, y1, x2, y2], got {value!r}", key="bbox", reason="bad_bbox")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise DataError(f"expected integer pixel coordinates, got {value!r}", key="bbox", reason="bad_bbox")
        out.append(int(v))
    x1, y1, x2, y2 = out
    if x2 < x1:
        raise DataError(f"{out} has x2 < x1", key="bbox", reason="bad_bbox")
    if y2 < y1:
        raise DataError(f"{out} has y2 < y1", key="bbox", reason="bad_bbox")
    if x2 == x1 or y2 == y1:
        raise DataError(f"{out} is empty (zero width or height)", key="bbox", reason="bad_bbox")
    return x1, y1, x2, y2


MAX_ASPECT = 200  # the Qwen-VL image processors (ours and transformers') refuse longer sides over 200x the shorter


def _processable(width: int, height: int, path: str, key: str) -> None:
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT:
        raise DataError(f"{path} is {width}x{height}: the image processor refuses an aspect ratio over {MAX_ASPECT}:1",
                        key=key, reason="bad_image")


def validate_row(obj: dict[str, Any], *, root: str | Path, source: str = "vision-opd-6k", line: int = 0,
                 check_images: CheckImages = "decode") -> Record:
    """A validated ``Record`` from a parsed row; ``DataError`` (without file/line: the caller adds them)."""
    for key in ("images", "bbox", "problem", "answer"):
        if key not in obj:
            raise DataError("required key is missing", key=key, reason="missing_key")
    student = _one_path(obj, "images", required=True)
    teacher = _one_path(obj, "teacher_images", required=False)
    original = _one_path(obj, "original_images", required=False)
    bbox = _bbox(obj["bbox"])

    problem = obj["problem"]
    if not isinstance(problem, str):
        raise DataError(f"expected a string, got {type(problem).__name__}", key="problem", reason="bad_problem")
    if problem.count(IMAGE_PLACEHOLDER) != 1:
        raise DataError(f"expected exactly one {IMAGE_PLACEHOLDER} placeholder, found "
                        f"{problem.count(IMAGE_PLACEHOLDER)}", key="problem", reason="bad_problem")
    options, option_start, _ = parse_options(problem)

    answer = obj["answer"]
    letters = tuple(LETTERS[:len(options)])  # a tuple: "AB" must not pass as a substring of "ABCD"
    if not isinstance(answer, str) or answer.strip() not in letters:
        raise DataError(f"{answer!r} is not one of the option letters {', '.join(letters)}", key="answer",
                        reason="bad_answer")
    answer = answer.strip()

    extra = obj.get("extra_info")
    if extra is not None and not isinstance(extra, dict):
        raise DataError(f"expected an object, got {type(extra).__name__}", key="extra_info", reason="bad_value")
    stated = (extra or {}).get("answer")
    if stated is not None and (not isinstance(stated, str) or stated.strip() != answer):
        raise DataError(f"answer {answer!r} contradicts extra_info.answer {stated!r}", key="extra_info.answer",
                        reason="bad_answer")
    question = (extra or {}).get("question")
    if not isinstance(question, str) or not question.strip():
        question = _question_from_problem(problem, option_start)
    data_source = obj.get("data_source", source)
    if not isinstance(data_source, str) or not data_source:
        raise DataError(f"expected a non-empty string, got {data_source!r}", key="data_source", reason="bad_value")

    decode = check_images == "decode"
    width, height, _ = probe(resolve(student, root), decode=decode, key="images[0]")
    x1, y1, x2, y2 = bbox
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise DataError(f"{list(bbox)} lies outside the {width}x{height} image {student}", key="bbox",
                        reason="bad_bbox")
    _processable(width, height, student, "images[0]")
    if teacher is not None:
        tw, th, _ = probe(resolve(teacher, root), decode=decode, key="teacher_images[0]")
        _processable(tw, th, teacher, "teacher_images[0]")
    if original is not None:  # not trained on, but named: it must be there
        probe(resolve(original, root), decode=False, key="original_images[0]")

    return Record(id=f"{data_source}:{line}", source=data_source, line=line, full_image=student,
                  crop_image=teacher, original_image=original, image_width=width, image_height=height,
                  bbox=bbox, prompt=problem, question=question.strip(), options=options, answer=answer)


def validate_line(text: str, *, file: str | Path, line: int, root: str | Path, source: str = "vision-opd-6k",
                  check_images: CheckImages = "decode") -> Record:
    """``parse_line`` + ``validate_row``; every ``DataError`` names ``file``:``line``."""
    obj = parse_line(text, file=file, line=line)
    try:
        return validate_row(obj, root=root, source=source, line=line, check_images=check_images)
    except DataError as e:
        raise e.located(file, line) from None
