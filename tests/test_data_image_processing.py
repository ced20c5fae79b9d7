"""megatron_vopd.data.image_processing equals transformers' Qwen2VLImageProcessorPil, bit for bit."""

import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from megatron_vopd.data.image_processing import PRESETS, QwenVLImageProcessor, smart_resize

MODES = ["RGB", "L", "RGBA", "P", "LA", "CMYK"]
SIZES = [(640, 480), (37, 53), (1000, 300), (448, 448), (1501, 997), (28, 28), (13, 2000)]


def hf_processor(family: str, min_pixels: int, max_pixels: int) -> Qwen2VLImageProcessorPil:
    preset = PRESETS[family]
    return Qwen2VLImageProcessorPil(patch_size=preset["patch_size"], temporal_patch_size=preset["temporal_patch_size"],
                                    merge_size=preset["merge_size"], image_mean=list(preset["image_mean"]),
                                    image_std=list(preset["image_std"]), min_pixels=min_pixels, max_pixels=max_pixels)


def random_image(width: int, height: int, mode: str, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng([seed, width, height])
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA")
    return image.convert(mode) if mode != "P" else image.convert("RGB").quantize(64)


@pytest.mark.parametrize("family", ["qwen2.5", "qwen3.5"])
@pytest.mark.parametrize("bounds", [(56 * 56, 28 * 28 * 1280), (3136, 50176), (200 * 200, 400 * 400)])
def test_pixel_values_and_grid_equal_transformers(family, bounds):
    ours = QwenVLImageProcessor.for_family(family, min_pixels=bounds[0], max_pixels=bounds[1])
    theirs = hf_processor(family, *bounds)
    for i, (w, h) in enumerate(SIZES):
        image = random_image(w, h, MODES[i % len(MODES)], seed=i)
        a, b = ours([image]), theirs([image], return_tensors="np")
        assert a["pixel_values"].dtype == np.float32 and a["image_grid_thw"].dtype == np.int64
        np.testing.assert_array_equal(a["image_grid_thw"], b["image_grid_thw"])
        np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])  # exact, not just allclose


@pytest.mark.parametrize("mode", MODES)
def test_modes_are_converted_like_transformers(mode):
    image = random_image(150, 90, mode, seed=3)
    a, b = QwenVLImageProcessor()([image]), hf_processor("qwen2.5", 56 * 56, 28 * 28 * 1280)([image], return_tensors="np")
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])


def test_several_images_concatenate_like_transformers():
    images = [random_image(w, h, "RGB", seed=i) for i, (w, h) in enumerate(SIZES[:4])]
    a, b = QwenVLImageProcessor()(images), hf_processor("qwen2.5", 56 * 56, 28 * 28 * 1280)(images, return_tensors="np")
    np.testing.assert_array_equal(a["image_grid_thw"], b["image_grid_thw"])
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])


def test_smart_resize_equals_transformers():
    rng = np.random.default_rng(0)
    for h, w in rng.integers(10, 6000, (400, 2)):
        if max(h, w) / min(h, w) > 200:
            continue
        for factor, lo, hi in ((28, 56 * 56, 28 * 28 * 1280), (32, 65536, 16777216), (28, 3136, 50176)):
            assert smart_resize(int(h), int(w), factor, lo, hi) == hf_smart_resize(int(h), int(w), factor, lo, hi)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000)


def test_token_count_matches_pixel_values():
    proc = QwenVLImageProcessor()
    pixel_values, grid = proc.process(random_image(333, 222, "RGB"))
    assert pixel_values.shape == (grid[1] * grid[2], 3 * 2 * 14 * 14)
    assert proc.num_image_tokens(222, 333) == grid[1] * grid[2] // 4
    assert proc.grid_thw(222, 333) == grid


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="min_pixels"):
        QwenVLImageProcessor(min_pixels=100, max_pixels=10)
    with pytest.raises(ValueError, match="data.tokenizer"):
        QwenVLImageProcessor.for_family("llava")
