"""Synthetic fine-grained scenes in the raw Vision-OPD-6K layout (the default data of the demo and tests).

``synthesize(out_dir, n, seed)`` writes ``out_dir/train.jsonl`` plus ``images/`` (full scene with the
red evidence box), ``teacher_images/`` (crop around the box, red border kept) and
``original_images/`` (scene before the box), exactly the layout ``vopd data prepare`` reads.

A scene: a gradient background, many small distractor shapes, and one small target shape inside
an evidence box covering 1-3% of the image (like the real set, median ~1.1%). The answer depends on
the target only: the 4 options are colours, and every option colour also appears on at least two
distractors outside the box, so colour statistics of the full image give nothing away. Answers are
balanced (each block of 4 consecutive rows uses each letter once); everything is a function of
(seed, row index), so a row does not depend on ``n``. Red is not an object colour (the box is red).

The question/answer text is made by ONE function, ``make_question`` (change it for a longer answer
format), and ``format_problem`` lays it out as Vision-OPD-6K does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from megatron_vopd.data.views import BOX_LINE_WIDTH, crop_box, draw_red_box

SOURCE = "vopd-synth"
HINT = "Only focus on the objects inside the red bounding box in the image to answer this question."  # as Vision-OPD-6K
INSTRUCTION = "Answer with the option's letter from the given choices."  # answer_format="letter" (as Vision-OPD-6K)
# answer_format="sentence": a short sentence naming the colour, then the letter, so that a response is
# several tokens and on-policy sampling matters (docs/method.md, "What a small model shows").
SENTENCE_INSTRUCTION = "Name the color, then give the option's letter, as in: The color is X. The answer is Y."
# answer_format="color": a short sentence naming the colour ("The color is blue."); the chosen option is
# the one whose text the answer names (eval.parse_choice matches option texts when no letter is given).
COLOR_INSTRUCTION = "Answer with a short sentence naming the color, as in: The color is X."
ANSWER_FORMATS = ("letter", "sentence", "color")

# object colours (no red: the evidence box is red)
PALETTE = {
    "blue": (30, 80, 230), "green": (40, 170, 60), "yellow": (240, 220, 40), "purple": (140, 50, 190),
    "orange": (250, 140, 20), "cyan": (40, 210, 220), "pink": (250, 130, 200), "brown": (130, 80, 40),
    "black": (20, 20, 20), "white": (250, 250, 250), "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "diamond")


@dataclass(frozen=True)
class Shape:
    """One drawn object: kind, colour name, centre and size in pixels."""

    kind: str
    colour: str
    cx: float
    cy: float
    size: float


@dataclass(frozen=True)
class QA:
    """A multiple-choice question: text, option texts, index of the correct option."""

    question: str
    options: tuple[str, ...]
    answer_index: int

    @property
    def answer(self) -> str:
        return "ABCD"[self.answer_index]


def make_question(target: Shape, option_colours: tuple[str, ...], answer_index: int) -> QA:
    """THE question/answer text of a synthetic scene (one place to change the answer format).

    ``option_colours[answer_index]`` is the target's colour."""
    assert option_colours[answer_index] == target.colour
    return QA(question=f"What is the color of the {target.kind} inside the red box?",
              options=tuple(option_colours), answer_index=answer_index)


def format_problem(qa: QA, answer_format: str = "letter") -> str:
    """The Vision-OPD-6K problem text: image, question, hint, lettered options, instruction."""
    options = "\n".join(f"{'ABCD'[i]}. {text}" for i, text in enumerate(qa.options))
    instruction = {"letter": INSTRUCTION, "sentence": SENTENCE_INSTRUCTION, "color": COLOR_INSTRUCTION}[answer_format]
    return f"<image>\n{qa.question}\n\n{HINT}\n\n{options}\n\n{instruction}"


def reference_response(options, answer: str, answer_format: str = "letter") -> str:
    """The correct response in ``answer_format`` (used only by the labelled warm-up of the demo)."""
    if answer_format == "letter":
        return answer
    if answer_format == "color":
        return f"The color is {options['ABCD'.index(answer)]}."
    return f"The color is {options['ABCD'.index(answer)]}. The answer is {answer}."


def reference_response_ids(options, answer: str, answer_format: str, tokenizer) -> np.ndarray:
    """The token ids of ``reference_response`` followed by the end-of-turn token ``<|im_end|>``."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return np.asarray(tokenizer.encode(reference_response(options, answer, answer_format)) + [end], dtype=np.int64)


def _draw(draw: ImageDraw.ImageDraw, s: Shape) -> None:
    r, fill = s.size / 2, PALETTE[s.colour]
    box = [s.cx - r, s.cy - r, s.cx + r, s.cy + r]
    if s.kind == "circle":
        draw.ellipse(box, fill=fill)
    elif s.kind == "square":
        draw.rectangle(box, fill=fill)
    elif s.kind == "triangle":
        draw.polygon([(s.cx, s.cy - r), (s.cx + r, s.cy + r), (s.cx - r, s.cy + r)], fill=fill)
    else:
        draw.polygon([(s.cx, s.cy - r), (s.cx + r, s.cy), (s.cx, s.cy + r), (s.cx - r, s.cy)], fill=fill)


def answer_index(seed: int, index: int) -> int:
    """Balanced answers: rows 4k..4k+3 use a seeded permutation of the 4 letters."""
    return int(np.random.default_rng([seed, index // 4, 7]).permutation(4)[index % 4])


@dataclass(frozen=True)
class Scene:
    """A generated scene: the original image, the evidence box, the target, the question."""

    original: Image.Image
    bbox: tuple[int, int, int, int]
    target: Shape
    qa: QA


def make_scene(seed: int, index: int, size: int = 448, num_distractors: int = 24) -> Scene:
    """Scene number ``index`` of the dataset with ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    # background: a vertical gradient between two muted colours
    top, bottom = rng.integers(90, 200, 3), rng.integers(90, 200, 3)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(background, (size, size, 3)).copy())
    draw = ImageDraw.Draw(image)

    # evidence box: 1-3% of the image area, aspect 0.75-1.33, away from the borders
    area = rng.uniform(0.01, 0.03) * size * size
    aspect = rng.uniform(0.75, 1.33)
    bw, bh = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
    edge = BOX_LINE_WIDTH + 2
    x1 = int(rng.integers(edge, size - bw - edge))
    y1 = int(rng.integers(edge, size - bh - edge))
    bbox = (x1, y1, x1 + bw, y1 + bh)

    colours = list(PALETTE)
    ans = answer_index(seed, index)
    chosen = [colours[i] for i in rng.choice(len(colours), 4, replace=False)]
    target_colour = chosen[0]
    option_colours = chosen[1:]
    option_colours.insert(ans, target_colour)
    target_size = 0.6 * min(bw, bh) * rng.uniform(0.8, 1.0)
    jitter = (min(bw, bh) - target_size) / 2 * 0.5
    target = Shape(str(rng.choice(SHAPES)), target_colour, x1 + bw / 2 + rng.uniform(-jitter, jitter),
                   y1 + bh / 2 + rng.uniform(-jitter, jitter), target_size)

    # distractors outside the box (clear of the red border), similar sizes; every option colour twice
    distractor_colours = [c for c in option_colours for _ in range(2)]
    distractor_colours += [colours[i] for i in rng.integers(0, len(colours), max(0, num_distractors - 8))]
    keep_out = (x1 - 2 * edge, y1 - 2 * edge, x1 + bw + 2 * edge, y1 + bh + 2 * edge)
    for colour in distractor_colours[:max(num_distractors, 8)]:
        for _ in range(100):  # rejection sampling of a free position
            s = target_size * rng.uniform(0.7, 1.3)
            cx, cy = rng.uniform(s / 2, size - s / 2, 2)
            if (cx + s / 2 < keep_out[0] or cx - s / 2 > keep_out[2] or
                    cy + s / 2 < keep_out[1] or cy - s / 2 > keep_out[3]):
                _draw(draw, Shape(str(rng.choice(SHAPES)), colour, cx, cy, s))
                break
    _draw(draw, target)
    return Scene(image, bbox, target, make_question(target, tuple(option_colours), ans))


def synthesize(out_dir: str | Path, n: int, seed: int = 0, *, size: int = 448, crop_margin: float = 0.5,
               min_crop_size: int | None = None, num_distractors: int = 24, answer_format: str = "letter",
               jsonl_name: str = "train.jsonl", start: int = 0, log=None) -> Path:
    """Write scenes ``start .. start + n - 1`` to ``out_dir`` in the raw layout; returns the jsonl path.

    ``answer_format``: "letter" (Vision-OPD-6K's instruction) or "sentence" (see SENTENCE_INSTRUCTION).
    ``start`` with another ``jsonl_name`` writes a disjoint split (e.g. held-out questions) beside it.

    Crops use ``views.crop_box`` with ``crop_margin`` and ``min_crop_size`` (default ``size // 4``)."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format={answer_format!r}: expected one of {ANSWER_FORMATS}")
    out = Path(out_dir)
    for sub in ("images", "teacher_images", "original_images"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    min_crop_size = size // 4 if min_crop_size is None else min_crop_size
    jsonl = out / jsonl_name
    with open(jsonl, "w", encoding="utf-8") as f:
        for i in range(start, start + n):
            scene = make_scene(seed, i, size, num_distractors)
            name = f"synth_{i:06d}.png"
            boxed = draw_red_box(scene.original, scene.bbox)
            crop = boxed.crop(crop_box(scene.bbox, boxed.size, margin=crop_margin, min_size=min_crop_size))
            for sub, image in (("images", boxed), ("teacher_images", crop), ("original_images", scene.original)):
                image.save(out / sub / name, compress_level=1)
            row = {
                "images": [f"images/{name}"], "teacher_images": [f"teacher_images/{name}"],
                "original_images": [f"original_images/{name}"], "bbox": list(scene.bbox),
                "problem": format_problem(scene.qa, answer_format), "answer": scene.qa.answer,
                "extra_info": {"answer": scene.qa.answer, "question": scene.qa.question}, "data_source": SOURCE,
            }
            f.write(json.dumps(row) + "\n")
            if log is not None and (i + 1 - start) % 500 == 0:
                log(f"synth: {i + 1 - start}/{n} scenes written")
    return jsonl
