"""Where the rollout engines live and which prompts each samples: one engine per rollout group.

A rollout group is ``rollout.tensor_parallel_size`` consecutive ranks on one node; the world holds
``world_size / tp`` groups, so an engine sits on every GPU. Each rank of a group hosts one
tensor-parallel rank of its engine (vLLM's ``external_launcher`` executor: the engine's workers live
in the ranks' own child processes, so every rank feeds its worker the synced weights in-process);
the group's first rank returns the samples. With engine TP 1 (the CPU, and the default) every rank
is a group of one.

The step's prompts are split over the engines in consecutive blocks (``prompts``); every request is
seeded from the step and the prompt's index (``request_seed``), so what a prompt samples does not
depend on which engine samples it or how many engines there are.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_vopd.config import ConfigError


@dataclass(frozen=True)
class EngineLayout:
    world_size: int
    ranks_per_node: int
    tp: int  # rollout.tensor_parallel_size: ranks (GPUs) per engine

    def __post_init__(self):
        where = f"rollout.tensor_parallel_size={self.tp}"
        if self.tp < 1:
            raise ConfigError(f"{where} must be >= 1")
        if self.ranks_per_node < 1 or self.world_size % self.ranks_per_node:
            raise ConfigError(f"world size {self.world_size} is not a whole number of nodes of {self.ranks_per_node} ranks")
        if self.ranks_per_node % self.tp:
            raise ConfigError(f"{where}: an engine's ranks must share a node, and {self.tp} does not divide the "
                              f"{self.ranks_per_node} ranks (GPUs) per node")

    @property
    def n_engines(self) -> int:
        return self.world_size // self.tp

    def engine_of(self, rank: int) -> int:
        return rank // self.tp

    def group(self, engine: int) -> range:
        """The ranks of ``engine``'s rollout group; the first one returns its samples."""
        return range(engine * self.tp, (engine + 1) * self.tp)

    def is_host(self, rank: int) -> bool:
        return rank % self.tp == 0

    def group_rank(self, rank: int) -> int:
        """The rank's position in its group: its engine's tensor-parallel rank."""
        return rank % self.tp

    def prompts(self, engine: int, n_prompts: int) -> range:
        """The consecutive block of the step's ``n_prompts`` prompts that ``engine`` samples (sizes differ
        by at most one; with fewer prompts than engines the last engines sample nothing)."""
        return split_range(n_prompts, self.n_engines)[engine]

    def describe(self) -> str:
        nodes = self.world_size // self.ranks_per_node
        return (f"{self.n_engines} vLLM engines (TP {self.tp}) over {nodes} node(s) x {self.ranks_per_node} ranks: "
                f"{self.ranks_per_node // self.tp} per node, hosted by ranks "
                + ", ".join(str(e * self.tp) for e in range(min(self.n_engines, 8)))
                + (" ..." if self.n_engines > 8 else ""))


def split_range(n: int, parts: int) -> list[range]:
    """``range(n)`` in ``parts`` consecutive blocks whose sizes differ by at most one (larger first)."""
    q, extra = divmod(n, parts)
    starts = [i * q + min(i, extra) for i in range(parts + 1)]
    return [range(starts[i], starts[i + 1]) for i in range(parts)]


def request_seed(seed: int, step: int, prompt: int, n_samples: int) -> int:
    """The vLLM seed of the step's ``prompt``-th request: its ``n`` samples draw from seeds
    ``request_seed .. request_seed + n - 1`` (vLLM's parallel sampling adds the sample index), so no two
    samples of a run share a stream and none depends on the engine layout."""
    return ((seed * 1_000_003 + step) * 1_000_003 + prompt * n_samples) % (2**63)


def per_engine(layout: EngineLayout, value) -> list:
    """Collective over the world: ``value`` of each engine's host, in engine order."""
    import torch.distributed as dist

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return [values[layout.group(e)[0]] for e in range(layout.n_engines)]


def generate_split(engine, layout: EngineLayout, requests: list, sampling, *, weight_version: int) -> list:
    """Collective over the world: every engine samples its block of ``requests`` (``EngineLayout.prompts``)
    and every rank gets all the samples, in request order (an all-gather of the hosts' token ids and
    log-probs: no rank funnels the step's samples)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    engine.check_version(weight_version)
    block = layout.prompts(layout.engine_of(rank), len(requests))
    mine = engine.generate([requests[i] for i in block], sampling, weight_version=weight_version) if len(block) else []
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine if layout.is_host(rank) else None)
    return [sample for e in range(layout.n_engines) for sample in gathered[layout.group(e)[0]]]
