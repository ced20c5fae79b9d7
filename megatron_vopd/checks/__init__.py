"""Parity checks that run whole layouts (torchrun workers), above everything they check:

- ``layouts``   the same weights give the same logits, loss and gradient norm at any TP x PP;
- ``hf_parity`` a converted checkpoint's logits equal transformers' at any TP x PP;
- ``sync``      after a weight sync, the engine samples with the Megatron model's probabilities;
- ``tp_loss``   the vocab-parallel distillation loss equals the dense reference.

No library module imports them; the tests and tools/gpu_check.sh run them.
"""
