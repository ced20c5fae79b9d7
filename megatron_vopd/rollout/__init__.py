"""Rollouts: a small engine interface (engine.py), the engine factory (factory.py), the vLLM engine
(vllm_engine.py), weight sync and the probe prompts of the sync check and the rollout benchmark."""

from megatron_vopd.rollout.engine import RolloutEngine, RolloutRequest, Sample, SamplingSpec, StaleWeightsError

__all__ = ["RolloutEngine", "RolloutRequest", "Sample", "SamplingSpec", "StaleWeightsError"]
