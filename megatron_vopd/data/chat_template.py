"""Prompt token ids in the Qwen chat format, identical to the models' own chat templates.

A Vision-OPD prompt is one user turn whose text is the dataset's ``problem`` (with one ``<image>``
placeholder), no system message from us, and the assistant's generation prompt. The same text is
used for both views (full image and crop); only the number of ``<|image_pad|>``
tokens differs. As in the reference (verl), the problem is split at ``<image>`` into content items:

    "<image>\\nWhat colour ...?"  ->  [{"type": "image"}, {"type": "text", "text": "\\nWhat colour ...?"}]

Rendered per family (the shipped templates in ``templates/`` are the models' own, used by the tests):

- ``qwen2.5`` (Qwen2.5-VL-Instruct): the template itself inserts its default system prompt
  ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n`` when the conversation has none;
  then ``<|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n``.
- ``qwen3.5``: no system turn; ``<|im_start|>user\\n{content|trim}<|im_end|>\\n<|im_start|>assistant\\n``
  followed by the non-thinking prefix ``<think>\\n\\n</think>\\n\\n`` (``thinking=True``: ``<think>\\n``).
- ``qwen3-vl`` (Qwen3-VL-Instruct): no system turn; ``<|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n``.

An image renders as ``<|vision_start|><|image_pad|><|vision_end|>``; ``encode_prompt`` then repeats
the pad id ``grid_t * grid_h * grid_w / merge**2`` times, as the HF processor does in text.
``tests/test_data_chat_template.py`` checks the ids against transformers' rendering of the templates.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

TEMPLATES_DIR = Path(__file__).parent / "templates"
TEMPLATE_FILES = {"qwen2.5": "qwen2_5_vl.jinja", "qwen3.5": "qwen3_5.jinja", "qwen3-vl": "qwen3_vl.jinja"}

IMAGE_PLACEHOLDER = "<image>"
IMAGE_PAD = "<|image_pad|>"
VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN25_DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
NON_THINKING_PREFIX = "<think>\n\n</think>\n\n"


def load_chat_template(family: str) -> str:
    """The model's own chat template (Jinja text) shipped in ``templates/`` for ``family``."""
    if family not in TEMPLATE_FILES:
        raise ValueError(f"unknown chat template family {family!r}; known: {', '.join(TEMPLATE_FILES)} (data.tokenizer)")
    text = (TEMPLATES_DIR / TEMPLATE_FILES[family]).read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def problem_to_content(problem: str) -> list[dict]:
    """The user content items of a problem: split at ``<image>`` (images in place, texts kept verbatim)."""
    content = []
    for piece in re.split(f"({re.escape(IMAGE_PLACEHOLDER)})", problem):
        if piece == IMAGE_PLACEHOLDER:
            content.append({"type": "image"})
        elif piece:
            content.append({"type": "text", "text": piece})
    return content


def build_messages(problem: str) -> list[dict]:
    """The conversation of one prompt: a single user turn (no system message)."""
    return [{"role": "user", "content": problem_to_content(problem)}]


def render_prompt(problem: str, family: str, *, thinking: bool = False) -> str:
    """The prompt text with one ``<|image_pad|>`` per image (what the chat template renders)."""
    body = "".join(VISION_BLOCK if item["type"] == "image" else item["text"] for item in problem_to_content(problem))
    if family == "qwen2.5":
        return f"{QWEN25_DEFAULT_SYSTEM}<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"
    if family == "qwen3.5":
        prefix = "<think>\n" if thinking else NON_THINKING_PREFIX
        return f"<|im_start|>user\n{body.strip()}<|im_end|>\n<|im_start|>assistant\n{prefix}"
    if family == "qwen3-vl":
        return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"
    raise ValueError(f"unknown chat template family {family!r}; known: {', '.join(TEMPLATE_FILES)} (data.tokenizer)")


def encode_prompt(problem: str, tokenizer, family: str, image_tokens: Sequence[int], *,
                  thinking: bool = False) -> np.ndarray:
    """Prompt token ids (int64) with the i-th image's pad token repeated ``image_tokens[i]`` times.

    ``image_tokens[i]`` = ``grid_h * grid_w // merge_size**2`` of that image (see
    ``QwenVLImageProcessor.num_image_tokens``)."""
    ids = tokenize_prompt(problem, tokenizer, family, thinking=thinking)
    return expand_image_pads(ids, tokenizer.convert_tokens_to_ids(IMAGE_PAD), image_tokens)


def tokenize_prompt(problem: str, tokenizer, family: str, *, thinking: bool = False) -> np.ndarray:
    """Prompt token ids with ONE pad token per image (tokenise once, expand per view)."""
    return np.asarray(_encode_text(tokenizer, render_prompt(problem, family, thinking=thinking)), dtype=np.int64)


def expand_image_pads(ids: np.ndarray, pad_id: int, image_tokens: Sequence[int]) -> np.ndarray:
    """``ids`` with the i-th ``pad_id`` repeated ``image_tokens[i]`` times."""
    where = np.flatnonzero(ids == pad_id)
    if len(where) != len(image_tokens):
        raise ValueError(f"the prompt has {len(where)} images but {len(image_tokens)} image token counts were given")
    repeats = np.ones(len(ids), dtype=np.int64)
    repeats[where] = np.asarray(image_tokens, dtype=np.int64)
    return np.repeat(ids, repeats)


def _encode_text(tokenizer, text: str) -> list[int]:
    return _encoder(tokenizer)(text)


@lru_cache(maxsize=8)
def _encoder(tokenizer):
    """The fastest faithful encoder: the ``tokenizers`` backend when the tokenizer has one."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None:
        return lambda text: backend.encode(text, add_special_tokens=False).ids
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
