"""The rollout engine interface: what the trainer needs from an inference engine, nothing more.

Lifecycle::

    engine = SomeEngine(...)          # nothing started yet
    engine.start()                    # load the model (from its folder, or dummy weights)
    engine.update_weights(buckets, version=1)   # buckets of (hf_name, tensor); weight_version := 1
    samples = engine.generate(requests, sampling, weight_version=1)
    engine.sleep()                    # rollout.sleep: free device memory while training
    engine.wake_up(["weights"]); engine.update_weights(...); engine.wake_up(["kv_cache"])
    ...                               # after every optimiser step: update_weights(..., version=k+1)
    engine.shutdown()

``generate`` takes the version the caller expects the engine to hold and raises
``StaleWeightsError`` when it holds another: sampling from weights that are not the policy's is
never silent. Prompts are token ids with ONE image-pad token per image (the engine expands them)
plus the images; each request yields ``n`` samples with their token ids, the log-probabilities the
engine assigned to those tokens, and why generation stopped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch


class StaleWeightsError(RuntimeError):
    pass


@dataclass
class RolloutRequest:
    prompt_token_ids: list[int]          # chat-templated prompt, one image pad per image
    images: list = field(default_factory=list)  # PIL images, in prompt order
    seed: int | None = None              # this request's sampling seed (None: SamplingSpec.seed)


@dataclass
class SamplingSpec:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int | None = None


@dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]                # log-prob of each sampled token under the engine's weights
    finish_reason: str                   # "stop" (EOS/stop token) or "length"


Bucket = list[tuple[str, torch.Tensor]]


class RolloutEngine(ABC):
    weight_version: int = 0              # 0: the weights the engine started with

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def generate(self, requests: list[RolloutRequest], sampling: SamplingSpec, *, weight_version: int) -> list[list[Sample]]:
        """``n`` samples per request; raises StaleWeightsError unless ``weight_version`` is held."""

    @abstractmethod
    def update_weights(self, buckets: Iterable[Bucket], version: int) -> None:
        """Load a full set of weights (HF names) streamed as buckets; then hold ``version``."""

    @abstractmethod
    def shutdown(self) -> None: ...

    def sleep(self) -> None:
        """Free the engine's device memory while training runs (``rollout.sleep``); a no-op by default."""

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take back what ``sleep`` freed (``tags``: "weights" before a sync, "kv_cache" before generating)."""

    def check_version(self, expected: int) -> None:
        if expected != self.weight_version:
            raise StaleWeightsError(f"the rollout engine holds weight version {self.weight_version} but the policy is at "
                                    f"version {expected}: sync the weights (rollout.weight_sync) before generating")

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()


def bucketize(stream: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterable[Bucket]:
    """Group a (name, tensor) stream into buckets of at most ``bucket_bytes`` (a larger tensor goes alone)."""
    bucket, size = [], 0
    for name, tensor in stream:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket
