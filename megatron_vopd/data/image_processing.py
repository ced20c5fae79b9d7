"""Qwen-VL image preprocessing, numerically identical to transformers' ``Qwen2VLImageProcessorPil``.

One image becomes ``pixel_values`` of shape ``(grid_h * grid_w, 3 * temporal_patch_size * patch_size**2)``
(float32) and ``image_grid_thw = (1, grid_h, grid_w)``; the language model sees
``grid_h * grid_w / merge_size**2`` ``<|image_pad|>`` tokens for it. The steps, as transformers does them:

1. convert to RGB with PIL (``L``, ``RGBA``, ``P``, ... become RGB; alpha is dropped, not composited);
2. ``smart_resize``: both sides a multiple of ``patch_size * merge_size`` (28 for Qwen2.5-VL), the
   pixel count within ``[min_pixels, max_pixels]``, the aspect ratio kept; PIL bicubic resampling;
3. rescale by 1/255 (in float64, then float32) and normalise ``(x - mean) / std`` in float32;
4. patchify: merge-window-major order ``(gh/m, gw/m, m, m)``, each patch ``(C, T, P, P)`` with the single
   frame repeated ``temporal_patch_size`` times.

Ours is faster because steps 3-4 run on uint8: the image is rearranged into patch order while it is
still 1 byte per value, then one lookup in a 3x256 table (the exact float32 result of step 3 for each
channel value) writes the output. ``tests/test_data_image_processing.py`` asserts equality with
transformers; ``bench/preprocess.py`` measures the speed ratio.

    >>> proc = QwenVLImageProcessor()                      # Qwen2.5-VL defaults
    >>> out = proc([PIL.Image.new("RGB", (640, 480))])
    >>> out["pixel_values"].shape, out["image_grid_thw"].tolist()
    ((1564, 1176), [[1, 34, 46]])
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# family -> preprocessing constants of its vision tower (min/max pixels come from DataConfig)
PRESETS = {
    # Qwen2-VL / Qwen2.5-VL: transformers' Qwen2VLImageProcessor defaults
    "qwen2.5": dict(patch_size=14, temporal_patch_size=2, merge_size=2, image_mean=OPENAI_CLIP_MEAN,
                    image_std=OPENAI_CLIP_STD),
    # Qwen3.5 (the Qwen3-VL vision tower): 16-px patches, mean = std = 0.5
    "qwen3.5": dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=(0.5, 0.5, 0.5),
                    image_std=(0.5, 0.5, 0.5)),
}
PRESETS["qwen3-vl"] = PRESETS["qwen3.5"]  # Qwen3-VL: the same tower and preprocessing


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """(height, width) with both sides multiples of ``factor``, area in [min_pixels, max_pixels], aspect kept.

    The same arithmetic as transformers' ``smart_resize`` (Python's round-half-to-even included)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB mode (PIL's conversion, as transformers' ``convert_to_rgb``)."""
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass
class QwenVLImageProcessor:
    """Smart resize + normalise + patchify for Qwen-VL vision towers (defaults: Qwen2.5-VL).

    ``__call__(images)`` returns ``{"pixel_values": (sum patches, C*T*P*P) float32,
    "image_grid_thw": (n, 3) int64}`` like transformers' processor with ``return_tensors="np"``."""

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    _lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels={self.min_pixels} must be <= max_pixels={self.max_pixels}")
        # the float32 value transformers computes for each uint8 value of each channel:
        # rescale in float64 (x * (1/255)), cast to float32, then (x - mean) / std in float32
        scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)[:, None]
        std = np.asarray(self.image_std, dtype=np.float32)[:, None]
        self._lut = ((scaled[None, :] - mean) / std).astype(np.float32)  # (3, 256)
        # the same table for PAIRS of bytes: a uint16 (two adjacent uint8 values, native byte order)
        # indexes two float32 results packed in a uint64. Half as many lookups, no index widening.
        bits = self._lut.view(np.uint32).astype(np.uint64)  # (3, 256)
        first, second = (bits[:, None, :], bits[:, :, None]) if sys.byteorder == "little" else (bits[:, :, None], bits[:, None, :])
        self._pair_lut = (first | (second << np.uint64(32))).reshape(3, 65536)

    @classmethod
    def for_family(cls, family: str, *, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280):
        """The processor of a model family (a key of ``PRESETS``) with the given pixel bounds."""
        if family not in PRESETS:
            raise ValueError(f"unknown model family {family!r}; known: {', '.join(PRESETS)} (data.tokenizer)")
        return cls(min_pixels=min_pixels, max_pixels=max_pixels, **PRESETS[family])

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this (patch_size * merge_size)."""
        return self.patch_size * self.merge_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def grid_thw(self, height: int, width: int) -> tuple[int, int, int]:
        """(1, grid_h, grid_w) for an image of this size."""
        h, w = self.resized_size(height, width)
        return 1, h // self.patch_size, w // self.patch_size

    def num_image_tokens(self, height: int, width: int) -> int:
        """How many ``<|image_pad|>`` tokens an image of this size takes in the prompt."""
        _, gh, gw = self.grid_thw(height, width)
        return gh * gw // self.merge_size**2

    def process(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One image -> (pixel_values (grid_h * grid_w, C*T*P*P) float32, (1, grid_h, grid_w))."""
        image = to_rgb(image)
        width, height = image.size
        h, w = self.resized_size(height, width)
        if (w, h) != (width, height):
            image = image.resize((w, h), resample=Image.Resampling.BICUBIC)
        pixels = np.asarray(image)  # (h, w, 3) uint8
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        # (gh/m, m, p, gw/m, m, p, C) -> (C, gh/m, gw/m, m, m, p, p): patch order, channel-major, still uint8
        patches = pixels.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(6, 0, 3, 1, 4, 2, 5)
        patches = np.ascontiguousarray(patches).reshape(3, gh * gw, p * p)
        out = np.empty((gh * gw, 3, t, p * p), dtype=np.float32)
        for c in range(3):
            if p % 2 == 0:
                values = self._pair_lut[c][patches[c].view(np.uint16)].view(np.float32)
            else:
                values = self._lut[c][patches[c]]
            for k in range(t):  # the single frame repeated over the temporal patch
                out[:, c, k] = values
        return out.reshape(gh * gw, 3 * t * p * p), (1, gh, gw)

    def __call__(self, images) -> dict[str, np.ndarray]:
        """A list of PIL images (or one) -> ``pixel_values`` (concatenated) and ``image_grid_thw``."""
        if isinstance(images, Image.Image):
            images = [images]
        results = [self.process(im) for im in images]
        return {
            "pixel_values": np.concatenate([r[0] for r in results], axis=0),
            "image_grid_thw": np.array([r[1] for r in results], dtype=np.int64).reshape(-1, 3),
        }
