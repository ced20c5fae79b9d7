"""Distillation: the divergence between teacher (crop) and student (full image) along sampled tokens.

``generalized_jsd_loss`` is the dense reference (full ``[N, V]`` logits, plain definition);
``vocab_parallel_generalized_jsd_loss`` is the production path on Megatron's vocab-parallel logits,
chunked over tokens, equal to the reference. ``num_valid_tokens`` gives the global token count for a
token mean over the whole batch (``reduction="sum"`` per micro-batch, then divide). ``Teacher``
holds the teacher's weights: the student's own (``current``), an EMA copy or a frozen copy.
"""

from megatron_vopd.distill.loss import generalized_jsd_loss, num_valid_tokens
from megatron_vopd.distill.teacher import Teacher
from megatron_vopd.distill.vocab_parallel import vocab_parallel_generalized_jsd_loss

__all__ = ["Teacher", "generalized_jsd_loss", "num_valid_tokens", "vocab_parallel_generalized_jsd_loss"]
