"""The two views of a prompt: the full image with the red box (the student's input) and the crop (the teacher's).

- full view: the full image with the red evidence box (shipped drawn in Vision-OPD-6K's ``images/``;
  ``draw_red_box`` draws it for synthetic scenes);
- crop view: the shipped crop (``teacher_images/``) when present, otherwise ``crop_box``: the
  evidence box grown by ``margin`` x its side on each side (at least ``border`` pixels, so the red
  rectangle drawn around the box stays inside the crop), then to ``min_size`` per side, then shifted
  into the image (and clamped to it when the image is smaller), cut from the full image.

    >>> crop_box((100, 100, 140, 120), (448, 448), margin=0.5, min_size=112)
    (64, 54, 176, 166)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from megatron_vopd.data.image_files import open_rgb, resolve

RED = (255, 0, 0)
BOX_LINE_WIDTH = 3  # pixels of the red rectangle drawn by draw_red_box


def draw_red_box(image: Image.Image, bbox: Sequence[int], width: int = BOX_LINE_WIDTH) -> Image.Image:
    """A copy of ``image`` (RGB) with a red rectangle of ``width`` px drawn just OUTSIDE ``bbox``
    (x1, y1, x2, y2; x2/y2 exclusive), so the evidence itself is not covered."""
    x1, y1, x2, y2 = bbox
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    ImageDraw.Draw(out).rectangle([x1 - width, y1 - width, x2 + width - 1, y2 + width - 1], outline=RED, width=width)
    return out


def _span(lo: int, hi: int, extent: int, margin: float, min_size: int, border: int) -> tuple[int, int]:
    pad = max(math.ceil(margin * (hi - lo)), border)
    a, b = lo - pad, hi + pad
    if b - a < min_size:
        extra = min_size - (b - a)
        a, b = a - extra // 2, b + extra - extra // 2
    if b - a >= extent:
        return 0, extent
    if a < 0:
        a, b = 0, b - a
    if b > extent:
        a, b = a - (b - extent), extent
    return a, b


def crop_box(bbox: Sequence[int], image_size: tuple[int, int], *, margin: float = 0.5, min_size: int = 224,
             border: int = BOX_LINE_WIDTH + 1) -> tuple[int, int, int, int]:
    """The crop (x1, y1, x2, y2) around ``bbox`` in an image of ``image_size`` = (width, height)."""
    x1, y1, x2, y2 = (int(v) for v in bbox)
    width, height = image_size
    cx1, cx2 = _span(x1, x2, width, margin, min_size, border)
    cy1, cy2 = _span(y1, y2, height, margin, min_size, border)
    return cx1, cy1, cx2, cy2


def crop_view(full: Image.Image, bbox: Sequence[int], *, margin: float = 0.5, min_size: int = 224) -> Image.Image:
    """The crop view cut from the full image (red border kept)."""
    return full.crop(crop_box(bbox, full.size, margin=margin, min_size=min_size))


def load_views(full_path: str | Path, crop_path: str | Path | None, bbox: Sequence[int], *,
               root: str | Path | None = None, margin: float = 0.5,
               min_size: int = 224) -> tuple[Image.Image, Image.Image]:
    """(full view, crop view) as RGB images: the shipped crop when ``crop_path``, else ``crop_view``."""
    full = open_rgb(resolve(full_path, root), key="full_image")
    if crop_path:
        return full, open_rgb(resolve(crop_path, root), key="crop_image")
    return full, crop_view(full, bbox, margin=margin, min_size=min_size)
