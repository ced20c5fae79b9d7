"""Multiple-choice accuracy on both views: the full image (red box) and the crop.

    items = eval_items(records, tokenizer=tok, family="qwen2.5", image_root=root, crop_margin=0.5, min_crop_size=224)
    result = evaluate(engine, items, weight_version=engine.weight_version, max_tokens=32, tokenizer=tok)
    result.full_acc, result.crop_acc, result.gap      # gap = crop_acc - full_acc: what distillation should close

Generation is greedy (temperature 0, one sample); a response counts as correct when ``parse_choice``
finds the record's answer letter in it. A response with no letter is wrong and counted as unparsed.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from megatron_vopd.rollout.engine import RolloutEngine, RolloutRequest, SamplingSpec

VIEWS = ("full", "crop")
UNPARSED = "none"  # the answer_counts key of responses without a letter


def parse_choice(text: str, letters: str = "ABCD", options: Sequence[str] = ()) -> str | None:
    """The option letter chosen in ``text``, or None. Rules, first match wins:

    1. "answer is X" / "Answer: X" (case-insensitive, optional "option", parentheses, ``**``, period;
       the last such phrase when there are several);
    2. the whole response is the letter: "B", "b", "B.", "(B)";
    3. the last standalone capital letter among ``letters`` ("A blue square ... so D" -> "D");
    4. with ``options`` (the option texts, in letter order): the option whose text the response names
       last, as a whole word ("The color is blue." with B = blue -> "B").

    A thinking model's reasoning (up to the last ``</think>``) is ignored.

    >>> parse_choice("The color is blue. The answer is B."), parse_choice("(C)"), parse_choice("blue")
    ('B', 'C', None)
    """
    if not text:
        return None
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    cls = re.escape(letters)
    phrase = re.compile(rf"answer(?:\s+is|\s*:|\s+is\s*:)\s*(?:option\s+)?[*\s]*\(?\s*([{cls}])\s*\)?(?![A-Za-z0-9])",
                        re.IGNORECASE)
    found = phrase.findall(text)
    if found:
        return found[-1].upper()
    whole = re.fullmatch(rf"\s*[*\s]*\(?\s*([{cls}])\s*\)?\s*[.:]?[*\s]*", text, re.IGNORECASE)
    if whole:
        return whole.group(1).upper()
    found = re.findall(rf"\b([{cls}])\b", text)
    if found:
        return found[-1]
    named = [(m.end(), len(option), letter) for letter, option in zip(letters, options) if option
             for m in re.finditer(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text, re.IGNORECASE)]
    return max(named)[2] if named else None  # the last named; of two ending together ("light blue"), the longer


@dataclass
class EvalItem:
    """One record as two engine requests: the same prompt ids with the full image, and with the crop."""

    id: str
    answer: str
    full: RolloutRequest
    crop: RolloutRequest
    letters: str = "ABCD"  # the option letters of this record
    options: tuple[str, ...] = ()  # the option texts (an answer may name one instead of its letter)


def eval_items(records: Sequence, *, tokenizer, family: str, image_root: str | Path | None, crop_margin: float,
               min_crop_size: int, thinking: bool = False) -> list[EvalItem]:
    """Both views of each record (``views.load_views``: the shipped crop, else the box + margin), one
    prompt tokenised once (``tokenize_prompt``, one image pad: the engine expands it per image)."""
    from megatron_vopd.data.chat_template import tokenize_prompt
    from megatron_vopd.data.views import load_views

    items = []
    for r in records:
        full, crop = load_views(r.full_image, r.crop_image, r.bbox, root=image_root, margin=crop_margin,
                                min_size=min_crop_size)
        ids = [int(t) for t in tokenize_prompt(r.prompt, tokenizer, family, thinking=thinking)]
        letters = "ABCDEFGHIJ"[:len(r.options)] if r.options else "ABCD"
        items.append(EvalItem(r.id, r.answer, RolloutRequest(ids, [full]), RolloutRequest(list(ids), [crop]), letters,
                              tuple(r.options or ())))
    return items


@dataclass
class EvalResult:
    n: int
    full_acc: float
    crop_acc: float
    gap: float                                   # crop_acc - full_acc
    full_unparsed: int                           # responses with no option letter
    crop_unparsed: int
    answer_counts: dict[str, dict[str, int]]     # view -> letter (or "none") -> responses
    seconds: float = 0.0
    predictions: list[dict] = field(default_factory=list, repr=False)  # per item: id, answer, texts, choices

    def to_dict(self) -> dict:
        """The summary (no per-item predictions)."""
        d = asdict(self)
        d.pop("predictions")
        return d


def evaluate(engine: RolloutEngine, items: Sequence[EvalItem], *, weight_version: int, max_tokens: int, tokenizer,
             batch_size: int = 64, log: Callable[[str], None] | None = print, generate: Callable | None = None) -> EvalResult:
    """Greedy answers for both views of every item, in batches of ``batch_size`` items (2 requests each).
    ``generate(requests, spec, weight_version=)`` defaults to ``engine.generate``; the trainer passes
    ``rollout.layout.generate_split`` over its engines (every rank calls, every rank gets the result)."""
    generate = generate or engine.generate
    if not items:
        raise ValueError("nothing to evaluate: no items")
    spec = SamplingSpec(n=1, temperature=0.0, max_tokens=max_tokens)
    t0 = time.perf_counter()
    correct = Counter()
    counts = {v: Counter() for v in VIEWS}
    predictions = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        out = generate([it.full for it in batch] + [it.crop for it in batch], spec, weight_version=weight_version)
        for i, it in enumerate(batch):
            pred = {"id": it.id, "answer": it.answer}
            for view, samples in zip(VIEWS, (out[i], out[len(batch) + i])):
                text = tokenizer.decode(samples[0].token_ids, skip_special_tokens=True)
                choice = parse_choice(text, it.letters, it.options)
                correct[view] += choice == it.answer
                counts[view][choice or UNPARSED] += 1
                pred[f"{view}_text"], pred[f"{view}_choice"] = text, choice
            predictions.append(pred)
        if log:
            done = len(predictions)
            log(f"[eval] {done}/{len(items)} prompts: full {correct['full'] / done:.3f}, "
                f"crop {correct['crop'] / done:.3f} ({time.perf_counter() - t0:.1f}s)")
    n = len(items)
    full_acc, crop_acc = correct["full"] / n, correct["crop"] / n
    return EvalResult(n=n, full_acc=full_acc, crop_acc=crop_acc, gap=crop_acc - full_acc,
                      full_unparsed=counts["full"][UNPARSED], crop_unparsed=counts["crop"][UNPARSED],
                      answer_counts={v: dict(sorted(c.items())) for v, c in counts.items()},
                      seconds=time.perf_counter() - t0, predictions=predictions)
