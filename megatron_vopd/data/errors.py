"""The one exception of the data package: ``DataError``, naming the file, the line and the key.

Every problem with input data (a malformed JSON line, a missing or truncated image, a box outside
its image, an answer that is not a letter A-D, ...) is raised as a ``DataError``. Its message reads

    /data/vopd6k/train.jsonl:17: bbox: [10, 5, 4, 20] has x2 < x1

so that a user can open the file at the line. ``reason`` is a short machine-readable code
(``malformed_json``, ``missing_image``, ...) that ``vopd data prepare`` counts in its summary.
"""

from __future__ import annotations

from pathlib import Path

# reason codes, with a one-line meaning each (the summary of `vopd data prepare` prints them)
REASONS = {
    "malformed_json": "the line is not a JSON object",
    "missing_key": "a required key is absent",
    "bad_value": "a value has the wrong type or form",
    "bad_problem": "the problem text is not a Vision-OPD multiple-choice prompt",
    "bad_answer": "the answer is not one of the option letters A-D",
    "bad_bbox": "the evidence box is malformed or outside the image",
    "missing_image": "an image file does not exist",
    "bad_image": "an image file cannot be decoded (truncated, corrupt, not an image)",
}


class DataError(ValueError):
    """Bad input data. ``str(e)`` is ``"<file>:<line>: <key>: <message>"`` (line and key when known)."""

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 key: str | None = None, reason: str = "bad_value"):
        if reason not in REASONS:
            raise ValueError(f"unknown DataError reason {reason!r}; known: {', '.join(REASONS)}")
        self.message, self.file, self.line, self.key, self.reason = message, file, line, key, reason
        where = "" if file is None else f"{file}:{line}: " if line is not None else f"{file}: "
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")

    def located(self, file: str | Path, line: int) -> "DataError":
        """The same error, attributed to ``file``:``line`` (used when a row-level check fails)."""
        return DataError(self.message, file=file, line=line, key=self.key, reason=self.reason)
