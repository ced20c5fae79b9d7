"""Evaluation: multiple-choice accuracy of a model on the full image and on the crop, greedy-decoded by the rollout engine, and its plot over training steps.

- ``accuracy``  ``parse_choice`` (the option letter of a response), ``eval_items`` (both views of each
                record as engine requests), ``evaluate`` (greedy generation -> ``EvalResult``)
- ``plot``      ``plot_accuracy``: full / crop accuracy and their gap per checkpoint step (PNG)

The command is ``vopd eval`` (``megatron_vopd.commands.eval``).
"""

from megatron_vopd.eval.accuracy import EvalItem, EvalResult, eval_items, evaluate, parse_choice
from megatron_vopd.eval.plot import plot_accuracy

__all__ = ["EvalItem", "EvalResult", "eval_items", "evaluate", "parse_choice", "plot_accuracy"]
