"""Scoring of the paper's benchmarks as the reference's frozen evaluator scores them.

Per record (``judge_record``):

1. the **extracted answer**: the text inside ``<answer>...</answer>``; else, when the output holds
   ``Answer:``, everything from the first ``Answer:`` on (prefix kept); else the whole output, stripped;
2. POPE: ``pope_extract`` (a leading or final yes/no word) equal to the truth -> correct (``pope_exact``);
   MMVP: ``mmvp_extract`` (the first ``(a)``/``(b)`` or standalone a/b) -> correct (``mmvp_option``);
3. MathRuler's ``grade_answer`` (math-normalised, case- and space-insensitive equality, then sympy
   equivalence) -> correct (``mathruler``);
4. multiple-choice benchmarks (``MCQ``): the truth's letter (``extract_mcq_option``) equal to the first
   option letter of the answer (``extract_first_option``) -> correct (``first letter``);
5. anything still undecided goes to the LLM judge with the reference's prompt (``JUDGE_PROMPT``), correct
   iff its reply is "yes" (``llm``). Without a judge such records count as wrong (``unmatched``): the
   output says how many, since the reference's numbers include the judge's verdicts.

The reference quirk that sends every POPE and MMVP record to the LLM even after an exact match (its
step 3 needs "no verdict yet") is kept when a judge is given; without one the exact match stands.
Aggregation (``aggregate``) is per benchmark: pooled accuracy (V*, ZoomBench, HR-Bench, MME-RealWorld,
MMStar, MMVP), the mean of the 2D and 3D accuracies (CV-Bench), accuracy plus precision/recall/F1 (POPE);
``macro`` is the unweighted mean of the paper's six.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

# the multiple-choice benchmarks of the reference's first-letter rule (ZoomBench is not among them)
MCQ = frozenset({"hrbench-4k", "hrbench-8k", "vstar", "mme-realworld", "mme-realworld-cn", "mme-realworld-lite",
                 "mmstar", "cv-bench"})
CORE = ("vstar", "zoombench", "hrbench-4k", "hrbench-8k", "mme-realworld", "mme-realworld-cn")

JUDGE_PROMPT = ("Your task is to judge whether the response expresses the same meaning as the answer of a question.\n"
                "The question is: {question}\nThe answer is: {gt}\nThe response is: {response}\n"
                "Please check and compare them and then judge. If the response is correct, your output should be Yes. "
                "Otherwise, your output should be No. Directly give me your output.")

# the paper's Table 1 (and Table 2 for the held-out four, 4B only): column -> benchmark -> accuracy (%)
PAPER = {
    "Qwen3.5-4B": {"vstar": 84.29, "zoombench": 47.69, "hrbench-4k": 84.38, "hrbench-8k": 80.13,
                   "mme-realworld": 63.86, "mme-realworld-cn": 63.70, "macro": 70.68,
                   "mmvp": 76.67, "cv-bench": 87.13, "mmstar": 78.53, "pope": 88.28},
    "Vision-OPD-4B": {"vstar": 92.15, "zoombench": 59.76, "hrbench-4k": 84.50, "hrbench-8k": 80.38,
                      "mme-realworld": 74.88, "mme-realworld-cn": 70.76, "macro": 77.07,
                      "mmvp": 79.67, "cv-bench": 87.27, "mmstar": 79.60, "pope": 89.14},
    "Vision-OPD-9B": {"vstar": 94.76, "zoombench": 65.80, "hrbench-4k": 88.13, "hrbench-8k": 85.50,
                      "mme-realworld": 73.40, "mme-realworld-cn": 70.46, "macro": 79.68},
}


def extracted_answer(output: str) -> str:
    """Step 1: the part of the raw model output that is scored."""
    if "<answer>" in output and "</answer>" in output:
        return output.split("<answer>", 1)[1].split("</answer>", 1)[0].strip()
    if "Answer:" in output:
        return output[output.index("Answer:"):].strip()
    return output.strip()


_GT_LETTER = re.compile(r"^\s*[(\[]?([A-F])(?:$|[.)\]]|[:\-]\s)")


def extract_mcq_option(gt: str) -> str | None:
    """The truth's option letter: "A", "(A)", "A.", "[A]", "A: text" -> "A"; else None."""
    m = _GT_LETTER.match(gt)
    return m.group(1) if m else None


def extract_first_option(text: str) -> str | None:
    """The answer's option letter: the first "(X)"; else the first capital followed by ".", ")" or white
    space; else the first capital anywhere ("The answer is B" -> "T", which then goes to the judge)."""
    for pattern in (r"\(([A-Z])\)", r"([A-Z])(?=[.)\s])", r"([A-Z])"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def pope_extract(text: str) -> str:
    """POPE's yes/no: a leading yes/no (after ``*`` and an "answer:" prefix), else a final one; else the text."""
    t = re.sub(r"^[*\s]*(?:answer)?[*\s:]*", "", text.strip(), flags=re.IGNORECASE)
    m = re.match(r"(yes|no)\b", t, re.IGNORECASE)
    if m:
        return m.group(1).lower()
    words = re.findall(r"[A-Za-z]+", t)
    return words[-1].lower() if words and words[-1].lower() in ("yes", "no") else t


def mmvp_extract(text: str) -> str | None:
    """MMVP's option: the first "(a)"/"(b)", else the first standalone word a or b, as "(a)"/"(b)"."""
    t = text.lower()
    m = re.search(r"\(([ab])\)", t) or re.search(r"(?<![a-z])([ab])(?![a-z])", t)
    return f"({m.group(1)})" if m else None


def _mathruler(gt: str, answer: str) -> bool:
    from mathruler.grader import grade_answer

    try:  # the reference's argument order: grade_answer(gt, extracted) (MathRuler names them given, truth)
        return bool(grade_answer(gt, answer))
    except Exception:  # noqa: BLE001 - MathRuler's sympy path raises on some free text: not a match
        return False


def judge_record(benchmark: str, query: str, gt: str, output: str,
                 judge: Callable[[str], str] | None = None) -> dict:
    """Steps 1-5 for one record: {extracted, pred, correct, judge_source, judge_reply}. ``judge`` maps a
    judge prompt to the judge's reply (None: undecided records count as wrong, ``unmatched``)."""
    ext = extracted_answer(output)
    pred = extract_first_option(ext) if benchmark in MCQ else ext
    verdict, source = None, None
    if benchmark == "pope":
        pred = pope_extract(ext)
        if pred == gt.strip().lower():
            verdict, source = True, "pope_exact"
    elif benchmark == "mmvp":
        pred = mmvp_extract(ext)
        if pred is not None and pred == gt.strip().lower():
            verdict, source = True, "mmvp_option"
    if verdict is None and _mathruler(gt, ext):
        verdict, source = True, "mathruler"
    if verdict is None and benchmark in MCQ:
        letter = extract_mcq_option(gt)
        if letter is not None and letter == pred:
            verdict, source = True, "first letter"
    reply = None
    if judge is not None and (verdict is None or benchmark in ("pope", "mmvp")):
        question = query.replace("<image>", "").strip()
        reply = judge(JUDGE_PROMPT.format(question=question, gt=gt, response=ext))
        verdict, source = reply.strip().lower() == "yes", "llm"
    if verdict is None:
        verdict, source = False, "unmatched"
    return {"extracted": ext, "pred": pred, "correct": verdict, "judge_source": source, "judge_reply": reply}


def _acc(rows: list[dict]) -> dict:
    correct = sum(bool(r["correct"]) for r in rows)
    return {"n": len(rows), "correct": correct, "accuracy": 100.0 * correct / len(rows) if rows else 0.0}


def _by(rows: Iterable[dict], key: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get(key) is not None:
            groups.setdefault(f"{key}/{r[key]}", []).append(r)  # first-appearance order
    return groups


# the record fields each benchmark breaks its accuracy down by
BREAKDOWN = {"vstar": ("category",), "hrbench-4k": ("category", "cycle"), "hrbench-8k": ("category", "cycle"),
             "mme-realworld": ("task", "category", "l2_category"), "mme-realworld-cn": ("task", "category", "l2_category"),
             "mme-realworld-lite": ("task", "category", "l2_category"), "mmstar": ("category",),
             "cv-bench": ("type", "task"), "pope": ("category",), "zoombench": ("question_type",)}


def aggregate(benchmark: str, rows: list[dict]) -> dict:
    """result.json of one benchmark from its scored records: n, correct, accuracy (%, the benchmark's
    headline), the breakdown per category field, and how many records each rule decided."""
    out = _acc(rows)
    out["categories"] = {name: _acc(group) for key in BREAKDOWN.get(benchmark, ())
                         for name, group in _by(rows, key).items()}
    if benchmark == "cv-bench":  # the mean of the 2D and 3D accuracies, each pooled within its dimension
        dims = [out["categories"][k]["accuracy"] for k in ("type/2D", "type/3D") if k in out["categories"]]
        out["accuracy"] = sum(dims) / len(dims) if dims else 0.0
    if benchmark == "pope":  # positives are the records whose truth is "yes"
        tp = sum(r["correct"] and r["gt"].lower() == "yes" for r in rows)
        fp = sum(not r["correct"] and r["gt"].lower() == "no" for r in rows)
        fn = sum(not r["correct"] and r["gt"].lower() == "yes" for r in rows)
        precision = 100.0 * tp / (tp + fp) if tp + fp else 0.0
        recall = 100.0 * tp / (tp + fn) if tp + fn else 0.0
        out.update(precision=precision, recall=recall,
                   f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                   yes_ratio=100.0 * sum(r["gt"].lower() == "yes" for r in rows) / len(rows) if rows else 0.0)
    out["decided_by"] = {}
    for r in rows:
        out["decided_by"][r["judge_source"]] = out["decided_by"].get(r["judge_source"], 0) + 1
    return out


def macro(results: dict[str, dict]) -> float | None:
    """The unweighted mean of the paper's six headline accuracies; None unless all six were run."""
    if not all(name in results for name in CORE):
        return None
    return sum(results[name]["accuracy"] for name in CORE) / len(CORE)


def summary_table(results: dict[str, dict]) -> str:
    """Each benchmark's accuracy next to the paper's columns, and the macro average of the six."""
    cols = list(PAPER)
    lines = [f"{'benchmark':<20}{'n':>7}{'ours':>8}" + "".join(f"{c:>15}" for c in cols)]
    paper = lambda c, name: f"{PAPER[c][name]:>15.2f}" if name in PAPER[c] else f"{'-':>15}"  # noqa: E731
    for name, r in results.items():
        lines.append(f"{name:<20}{r['n']:>7}{r['accuracy']:>8.2f}" + "".join(paper(c, name) for c in cols))
        if "crop_view" in r:  # the records with the benchmark's own crop: both views, and the gap
            crop, full = r["crop_view"]["crop"], r["crop_view"]["full_on_the_same_records"]
            lines.append(f"{'  its crops':<20}{crop['n']:>7}{crop['accuracy']:>8.2f}  (full image on the same records "
                         f"{full['accuracy']:.2f}, gap {crop['accuracy'] - full['accuracy']:+.2f})")
    m = macro(results)
    lines.append(f"{'macro (six)':<20}{'':>7}" + (f"{m:>8.2f}" if m is not None else f"{'-':>8}")
                 + "".join(paper(c, "macro") for c in cols))
    unmatched = sum(r["decided_by"].get("unmatched", 0) for r in results.values())
    if unmatched:
        lines.append(f"{unmatched} answer(s) matched no rule and count as wrong (no --judge); the paper's numbers "
                     "include an LLM judge's verdicts on such answers")
    return "\n".join(lines)
