"""vLLM rollouts with weight sync from Megatron at TP1, TP2 and PP2 (torchrun on gloo, vLLM's CPU build):
the engine's sampled-token log-probs equal the Megatron model's teacher-forced ones, generating with
stale weights is refused, a sync changes the output, and vLLM's greedy output equals transformers'."""

import pytest

from megatron_vopd.rollout.engine import bucketize
from megatron_vopd.runtime.torchrun import torchrun

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2)], ids=["tp1", "tp2", "pp2"])
def test_sync_then_rollout_matches_megatron(tmp_path, tp, pp):
    extra = ["--greedy-vs-transformers"] if (tp, pp) == (1, 1) else []
    code, r, out = torchrun("megatron_vopd.checks.sync", tp * pp, "--tp", str(tp), "--pp", str(pp),
                            "--workdir", str(tmp_path), *extra, timeout=1500)
    assert code == 0 and r is not None, out[-5000:]
    assert r["sampled_tokens"] == 32
    assert r["logprob_max_abs_diff"] <= 1e-3, r
    assert r["stale_error"] and "weight version 1" in r["stale_error"] and "version 2" in r["stale_error"]
    assert r["greedy_after"] != r["greedy_before"]
    assert r["sync"]["bytes"] > 100e6
    if extra:
        assert r["greedy_after"] == r["greedy_transformers"]


def test_bucketize_respects_the_byte_budget():
    import torch

    stream = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 100])]  # float32: 4 bytes each
    buckets = list(bucketize(iter(stream), bucket_bytes=80))
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3"], ["t4"]]
