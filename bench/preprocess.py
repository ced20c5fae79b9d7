"""Image preprocessing speed: ours (megatron_vopd.data.image_processing) vs transformers' processor.

    .venv/bin/python bench/preprocess.py            # 12 full-size images + 12 crops, Vision-OPD-6K-like sizes
    .venv/bin/python bench/preprocess.py --quick    # a few small images, seconds

The product is the RATIO printed last, ``PREPROCESS_RATIO`` = images/s of ours / images/s of
transformers' ``Qwen2VLImageProcessorPil`` on the SAME decoded PIL images, in the same run, with the
same settings (Qwen2.5-VL: min_pixels 56*56, max_pixels 28*28*1280, 14-px patches, merge 2). Goal >= 1.

Images: full views with widths drawn from 1500-5300 px (median ~2250, aspect 3:2, like the
Vision-OPD-6K images) and crops of ~250-650 px (median ~430); random content (resampling cost does not
depend on it). Decoding is not timed (it is the same for both). Outputs are checked equal first.
Timing: ``--repeats`` passes over all images, alternating which processor goes first; the median pass
time of each is used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from PIL import Image


def make_images(n_full: int, n_crops: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(int(w), int(w * 2 / 3)) for w in np.clip(rng.lognormal(np.log(2250), 0.3, n_full), 1500, 5300)]
    sizes += [(int(s), int(s * rng.uniform(0.8, 1.25))) for s in np.clip(rng.lognormal(np.log(430), 0.25, n_crops), 250, 650)]
    images = []
    for w, h in sizes:
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)  # cheap texture, upsampled
        images.append(Image.fromarray(small).resize((w, h), Image.Resampling.NEAREST))
    return images


def time_pass(fn, images) -> float:
    start = time.perf_counter()
    for image in images:
        fn(image)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", type=int, default=12, help="full-size images (widths 1500-5300 px)")
    ap.add_argument("--crops", type=int, default=12, help="crop-size images (~430 px)")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over all images per processor")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 full images, 4 crops, 3 passes")
    args = ap.parse_args()
    if args.quick:
        args.full, args.crops, args.repeats = 2, 4, 3

    from transformers import Qwen2VLImageProcessorPil

    from megatron_vopd.data.image_processing import QwenVLImageProcessor

    ours = QwenVLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    theirs = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    images = make_images(args.full, args.crops, args.seed)
    print(f"images: {args.full} full ({', '.join(f'{im.width}x{im.height}' for im in images[:args.full])}), "
          f"{args.crops} crops (median side {int(np.median([im.width for im in images[args.full:]] or [0]))} px)")

    def run_ours(image):
        return ours([image])

    def run_theirs(image):
        return theirs([image], return_tensors="np")

    for image in images:  # correctness first (and warm-up)
        a, b = run_ours(image), run_theirs(image)
        assert np.array_equal(a["pixel_values"], b["pixel_values"]), "pixel_values differ"
        assert np.array_equal(a["image_grid_thw"], b["image_grid_thw"]), "image_grid_thw differ"
    print("outputs: pixel_values and image_grid_thw identical for every image")

    t_ours, t_theirs = [], []
    for r in range(args.repeats):
        order = [(run_ours, t_ours), (run_theirs, t_theirs)]
        for fn, times in (order if r % 2 == 0 else order[::-1]):
            times.append(time_pass(fn, images))
        print(f"pass {r + 1}/{args.repeats}: ours {t_ours[-1]:.3f} s, transformers {t_theirs[-1]:.3f} s", flush=True)
    n = len(images)
    ours_ips, theirs_ips = n / statistics.median(t_ours), n / statistics.median(t_theirs)
    ratio = ours_ips / theirs_ips
    print(f"\nours:         {ours_ips:8.2f} images/s")
    print(f"transformers: {theirs_ips:8.2f} images/s")
    print("RESULT " + json.dumps({"images": n, "ours_images_per_s": round(ours_ips, 3),
                                  "transformers_images_per_s": round(theirs_ips, 3), "ratio": round(ratio, 4)}))
    print(f"PREPROCESS_RATIO {ratio:.4f}", flush=True)


if __name__ == "__main__":
    main()
