"""Rollouts: a small engine interface (engine.py), the vLLM engine (vllm_engine.py) and weight sync."""

from megatron_vopd.rollout.engine import RolloutEngine, RolloutRequest, Sample, SamplingSpec, StaleWeightsError

__all__ = ["RolloutEngine", "RolloutRequest", "Sample", "SamplingSpec", "StaleWeightsError"]
