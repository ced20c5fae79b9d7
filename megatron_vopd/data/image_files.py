"""Opening image files: fully decoded, converted to RGB, failures as ``DataError`` naming the file.

Non-RGB modes (``L``, ``LA``, ``RGBA``, ``P``, ``CMYK``, ``I;16``, ...) are converted with PIL's
``convert("RGB")`` (what transformers' processor does; alpha is dropped), never rejected. A missing
file is reason ``missing_image``; a truncated or corrupt one ``bad_image``.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from megatron_vopd.data.errors import DataError
from megatron_vopd.data.image_processing import to_rgb

# what PIL raises on unreadable files: OSError (truncated, unidentified), SyntaxError (broken headers),
# ValueError/struct errors in some plugins, DecompressionBombError on absurd sizes
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def resolve(path: str | Path, root: str | Path | None) -> Path:
    """``path`` as given when absolute, else relative to ``root`` (the dataset directory)."""
    path = Path(path)
    return path if path.is_absolute() or root is None else Path(root) / path


@contextmanager
def _opened(path: Path, key: str | None):
    """The PIL image at ``path``; a missing or undecodable file raises DataError naming it."""
    if path.is_dir():
        raise DataError(f"{path} is a directory, not an image file", key=key, reason="missing_image")
    if not path.is_file():
        raise DataError(f"image file not found: {path}", key=key, reason="missing_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except _DECODE_ERRORS as e:
        raise DataError(f"cannot decode image {path}: {e}", key=key, reason="bad_image") from None


def open_rgb(path: str | Path, *, key: str | None = None) -> Image.Image:
    """The image at ``path``, fully decoded, in RGB mode."""
    with _opened(Path(path), key) as image:
        image.load()
        return to_rgb(image) if image.mode != "RGB" else image.copy()


def probe(path: str | Path, *, decode: bool = True, key: str | None = None) -> tuple[int, int, str]:
    """(width, height, mode) of the image at ``path``; ``decode=True`` also decodes all pixels
    (finds truncated files), ``decode=False`` reads the header only (fast, finds missing/non-images)."""
    with _opened(Path(path), key) as image:
        if decode:
            image.load()
        return image.size[0], image.size[1], image.mode
