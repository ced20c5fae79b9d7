"""Evaluation: multiple-choice accuracy of a model on the full image and on the crop, greedy-decoded by the rollout engine, and its plot over training steps; and the paper's benchmarks.

- ``accuracy``  ``parse_choice`` (the option letter of a response), ``eval_items`` (both views of each
                record as engine requests), ``evaluate`` (greedy generation -> ``EvalResult``)
- ``plot``      ``plot_accuracy``: full / crop accuracy and their gap per checkpoint step (PNG);
                ``plot_benchmarks``: benchmark accuracies next to the paper's
- ``benchmarks``  readers of the benchmarks' downloaded files, with the reference's prompt per benchmark
- ``scoring``     the reference evaluator's extraction, letter rules, judge flow and aggregation
- ``judge``       the LLM judge client (any OpenAI-compatible endpoint)
- ``bench_run``   ``vopd eval --benchmark``: one engine, resumable predictions, result.json, summary

The command is ``vopd eval`` (``megatron_vopd.commands.eval``).
"""

from megatron_vopd.eval.accuracy import EvalItem, EvalResult, eval_items, evaluate, parse_choice
from megatron_vopd.eval.plot import plot_accuracy

__all__ = ["EvalItem", "EvalResult", "eval_items", "evaluate", "parse_choice", "plot_accuracy"]
