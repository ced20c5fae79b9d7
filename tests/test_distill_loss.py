"""The distillation loss: the dense reference against hand computations, and the vocab-parallel
production path at a world of one (a gloo group of one made here) against the dense reference."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_vopd.distill import generalized_jsd_loss, num_valid_tokens, vocab_parallel_generalized_jsd_loss
from megatron_vopd.distill.loss import TAIL_LSE_MAX

ALPHAS = (0.0, 0.5, 1.0)


def logits(n=6, v=11, seed=0, dtype=torch.float64, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).to(dtype), \
        (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).to(dtype)


def kl(p_log, q_log):
    """KL(P || Q) per row from log-probs, by torch's kl_div (input = log Q, target = log P)."""
    return F.kl_div(q_log, p_log, reduction="none", log_target=True).sum(-1)


def jsd_by_hand(p, q, alpha):
    """Generalised JSD in probability space: student p, teacher q (rows)."""
    m = (1 - alpha) * p + alpha * q
    return alpha * (q * (q / m).log()).sum(-1) + (1 - alpha) * (p * (p / m).log()).sum(-1)


# --------------------------------------------------------------------------- dense reference


def test_alpha_0_is_forward_kl_and_alpha_1_reverse_kl():
    x, y = logits()
    mask = torch.ones(6, dtype=torch.bool)
    s, t = x.log_softmax(-1), y.log_softmax(-1)
    fwd = generalized_jsd_loss(x, y, mask, alpha=0.0, top_k=None)
    rev = generalized_jsd_loss(x, y, mask, alpha=1.0, top_k=None)
    torch.testing.assert_close(fwd, kl(t, s).mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(rev, kl(s, t).mean(), rtol=0, atol=1e-12)
    assert abs(fwd - rev) > 1e-3  # the two directions differ: the test can tell them apart


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_mixture_matches_probability_space(alpha):
    x, y = logits(seed=1)
    mask = torch.ones(6, dtype=torch.bool)
    got = generalized_jsd_loss(x, y, mask, alpha=alpha, top_k=None)
    want = jsd_by_hand(x.softmax(-1), y.softmax(-1), alpha).mean()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_top_k_is_the_support_plus_tail_bucket(alpha):
    x, y = logits(seed=2)
    mask = torch.ones(6, dtype=torch.bool)
    p, q = x.softmax(-1), y.softmax(-1)
    ids = x.topk(3, dim=-1).indices
    pk, qk = p.gather(-1, ids), q.gather(-1, ids)
    p3 = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    q3 = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    want = (kl(q3.log(), p3.log()) if alpha == 0 else kl(p3.log(), q3.log()) if alpha == 1
            else jsd_by_hand(p3, q3, alpha)).mean()
    got = generalized_jsd_loss(x, y, mask, alpha=alpha, top_k=3)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_top_k_equal_to_vocab_is_full_vocab(alpha):
    """k = V: the tail is empty, the clamp floors both tails alike and they add nothing (value, gradient)."""
    x, y = logits(seed=3)
    mask = torch.ones(6, dtype=torch.bool)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    full = generalized_jsd_loss(xa, y, mask, alpha=alpha, top_k=None)
    topv = generalized_jsd_loss(xb, y, mask, alpha=alpha, top_k=11)
    full.backward()
    topv.backward()
    assert torch.isfinite(topv)
    torch.testing.assert_close(topv, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=0, atol=1e-6)
    big = generalized_jsd_loss(x, y, mask, alpha=alpha, top_k=1000)  # k > V: clamped to V
    torch.testing.assert_close(big, topv)


def test_top_k_equal_to_vocab_fp32():
    x, y = logits(seed=4, dtype=torch.float32, v=64)
    mask = torch.ones(6, dtype=torch.bool)
    for alpha in ALPHAS:
        full = generalized_jsd_loss(x, y, mask, alpha=alpha, top_k=None)
        topv = generalized_jsd_loss(x, y, mask, alpha=alpha, top_k=64)
        assert torch.isfinite(topv) and abs(topv - full) < 1e-5


def test_tail_clamp_keeps_a_concentrated_student_finite():
    x = torch.tensor([[40.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.zeros(2, 4, dtype=torch.float64)
    loss = generalized_jsd_loss(x, y, torch.ones(2, dtype=torch.bool), alpha=0.0, top_k=1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert TAIL_LSE_MAX < 0


@pytest.mark.parametrize("top_k", [None, 4])
@pytest.mark.parametrize("alpha", ALPHAS + (0.3,))
def test_student_equal_teacher_gives_zero(alpha, top_k):
    x, _ = logits(seed=5)
    student = x.clone().requires_grad_()
    loss = generalized_jsd_loss(student, x.clone(), torch.ones(6, dtype=torch.bool), alpha=alpha, top_k=top_k)
    loss.backward()
    assert abs(loss.item()) < 1e-12
    assert student.grad.abs().max() < 1e-12  # a minimum


@pytest.mark.parametrize("fn", [generalized_jsd_loss, vocab_parallel_generalized_jsd_loss], ids=["dense", "vocab_parallel"])
@pytest.mark.parametrize("top_k", [None, 3])
def test_teacher_gets_no_gradient(fn, top_k):
    x, y = logits()
    student, teacher = x.clone().requires_grad_(), y.clone().requires_grad_()
    fn(student, teacher, torch.ones(6, dtype=torch.bool), top_k=top_k).backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("fn", [generalized_jsd_loss, vocab_parallel_generalized_jsd_loss], ids=["dense", "vocab_parallel"])
@pytest.mark.parametrize("top_k", [None, 3])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_gradcheck(fn, alpha, top_k):
    x, y = logits(n=3, v=7, seed=6)
    mask = torch.tensor([True, False, True])
    log_ratio = torch.tensor([0.2, 0.1, -0.4], dtype=torch.float64)
    kw = dict(alpha=alpha, top_k=top_k, temperature=0.8, log_ratio=log_ratio)
    if fn is vocab_parallel_generalized_jsd_loss:
        kw["chunk_tokens"] = 1
    assert torch.autograd.gradcheck(lambda s: fn(s, y, mask, **kw), (x.clone().requires_grad_(),), eps=1e-6, atol=1e-6)


def test_importance_weights_clipped_detached_and_multiplied():
    x, y = logits(n=4)
    mask = torch.ones(4, dtype=torch.bool)
    per_token = generalized_jsd_loss(x, y, mask, reduction="none")
    r1 = torch.tensor([math.log(0.5), 0.0, math.log(3.0), 5.0], dtype=torch.float64, requires_grad=True)
    r2 = torch.tensor([math.log(1.5), math.log(1.5), 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    got = generalized_jsd_loss(x, y, mask, log_ratio=r1, is_clip=2.0, reduction="none")
    torch.testing.assert_close(got, per_token * torch.tensor([0.5, 1.0, 2.0, 2.0], dtype=torch.float64))
    both = generalized_jsd_loss(x, y, mask, log_ratio=(r1, r2), reduction="none")
    torch.testing.assert_close(both, per_token * torch.tensor([0.75, 1.5, 2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(generalized_jsd_loss(x, y, mask, log_ratio=(None, r2), reduction="none"),
                               per_token * torch.tensor([1.5, 1.5, 1.0, 1.0], dtype=torch.float64))
    assert not both.requires_grad  # detached: no path to the ratios
    unclipped = generalized_jsd_loss(x, y, mask, log_ratio=r1, is_clip=None, reduction="none")
    torch.testing.assert_close(unclipped[3], per_token[3] * math.exp(5.0))


def test_mask_excludes_tokens_and_reductions():
    x, y = logits(n=6)
    mask = torch.tensor([1, 0, 1, 1, 0, 1])
    per_token = generalized_jsd_loss(x, y, mask, reduction="none")
    assert per_token[1] == 0 and per_token[4] == 0
    torch.testing.assert_close(generalized_jsd_loss(x, y, mask, reduction="sum"), per_token.sum())
    torch.testing.assert_close(generalized_jsd_loss(x, y, mask), per_token.sum() / 4)
    x2 = x.clone()
    x2[[1, 4]] = 100.0 * torch.randn(2, 11, dtype=torch.float64)  # masked positions do not matter
    student = x2.requires_grad_()
    loss = generalized_jsd_loss(student, y, mask.bool())
    loss.backward()
    torch.testing.assert_close(loss, generalized_jsd_loss(x, y, mask))
    assert student.grad[[1, 4]].abs().max() == 0
    assert num_valid_tokens(mask) == 4 and num_valid_tokens(7) == 7
    empty = generalized_jsd_loss(x, y, torch.zeros(6, dtype=torch.bool))
    assert empty.item() == 0.0


def test_batched_shape_is_flattened():
    x, y = logits(n=6)
    mask = torch.tensor([1, 0, 1, 1, 0, 1]).bool()
    flat = generalized_jsd_loss(x, y, mask)
    torch.testing.assert_close(generalized_jsd_loss(x.view(2, 3, 11), y.view(2, 3, 11), mask.view(2, 3)), flat)


def test_bad_arguments_are_refused():
    x, y = logits()
    mask = torch.ones(6, dtype=torch.bool)
    with pytest.raises(ValueError, match="alpha"):
        generalized_jsd_loss(x, y, mask, alpha=1.5)
    with pytest.raises(ValueError, match="top_k"):
        generalized_jsd_loss(x, y, mask, top_k=0)
    with pytest.raises(ValueError, match="reduction"):
        vocab_parallel_generalized_jsd_loss(x, y, mask, reduction="avg")
    with pytest.raises(ValueError, match="chunk_tokens"):
        vocab_parallel_generalized_jsd_loss(x, y, mask, chunk_tokens=0)


# --------------------------------------------------------------------------- production path, world of one


@pytest.fixture(scope="module")
def gloo_group():
    """A gloo group of one in this process (or one of the world this process already has)."""
    created = not dist.is_initialized()
    if created:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    if dist.get_world_size() != 1:
        pytest.skip("this process is part of a larger world")
    yield dist.new_group([0], backend="gloo")
    if created:
        dist.destroy_process_group()


@pytest.mark.parametrize("chunk", [1, 3, 5, 64])  # 10 valid tokens: 5 divides, 3 does not
@pytest.mark.parametrize("top_k", [None, 5])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_vocab_parallel_world_of_one_equals_reference(gloo_group, alpha, top_k, chunk):
    x, y = logits(n=13, v=23, seed=7)
    mask = torch.ones(13, dtype=torch.bool)
    mask[[2, 7, 8]] = False
    log_ratio = (torch.randn(13, dtype=torch.float64), torch.randn(13, dtype=torch.float64))
    kw = dict(alpha=alpha, top_k=top_k, temperature=0.9, log_ratio=log_ratio)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = generalized_jsd_loss(xa, y, mask, **kw)
    got = vocab_parallel_generalized_jsd_loss(xb, y, mask, tp_group=gloo_group, chunk_tokens=chunk, **kw)
    ref.backward()
    got.backward()
    assert abs(got.item() - ref.item()) <= 1e-6
    assert (xb.grad - xa.grad).abs().max() <= 1e-6


@pytest.mark.parametrize("top_k", [None, 5])
def test_vocab_parallel_inplace_grad_batched_and_sum(gloo_group, top_k):
    """inplace_grad writes the gradient into the logits' storage; [B, S, V] in, "sum" reduction."""
    x, y = logits(n=12, v=17, seed=8)
    mask = (torch.arange(12) % 5 != 3).view(3, 4)
    xa = x.clone().requires_grad_()
    ref = generalized_jsd_loss(xa, y, mask.flatten(), top_k=top_k, reduction="sum")
    ref.backward()
    leaf = x.clone().view(3, 4, 17).requires_grad_()
    student = leaf * 1  # a non-leaf, like the output layer's logits
    got = vocab_parallel_generalized_jsd_loss(student, y.view(3, 4, 17), mask, top_k=top_k, reduction="sum",
                                              tp_group=gloo_group, chunk_tokens=4, inplace_grad=True)
    got.backward()
    assert abs(got.item() - ref.item()) <= 1e-6
    assert (leaf.grad.view(12, 17) - xa.grad).abs().max() <= 1e-6


def test_vocab_parallel_bf16_and_no_group():
    """bf16 inputs (computed in fp32, gradient in bf16); no process group at all: a world of one."""
    x, y = logits(n=9, v=40, seed=9, dtype=torch.bfloat16)
    mask = torch.ones(9, dtype=torch.bool)
    for top_k in (None, 8):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ref = generalized_jsd_loss(xa, y, mask, top_k=top_k)
        got = vocab_parallel_generalized_jsd_loss(xb, y, mask, top_k=top_k, chunk_tokens=4)
        ref.backward()
        got.backward()
        assert got.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
        assert abs(got.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
        assert (xb.grad.float() - xa.grad.float()).abs().max() <= 1e-2 * xa.grad.float().abs().max()


def test_blocked_logsumexp_equals_torch_logsumexp():
    """The loss's row logsumexp (blocks of rows through one buffer) equals torch.logsumexp of x / T in fp32,
    across block boundaries, for fp32 and bf16 logits (upcast), at T = 1 and T = 0.7."""
    import torch

    from megatron_vopd.distill.vocab_parallel import _logsumexp

    x = torch.randn(37, 1003, generator=torch.Generator().manual_seed(0)) * 5
    for logits in (x, x.bfloat16()):
        for t in (1.0, 0.7):
            got = _logsumexp(logits, torch.float32, t, block_rows=16)
            want = torch.logsumexp(logits.float() / t, dim=-1)
            assert got.dtype == torch.float32 and got.shape == (37,)
            torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
