"""Qwen3-VL (q/k norms, interleaved mrope, deepstack) on Megatron-Core against transformers: bit-exact HF <->
Megatron round trips at every layout, logits equal to transformers' (also with a deepstack layer on the second
pipeline stage), the same loss and gradient norm under pipeline parallelism with activation recompute, and
clear errors on bad checkpoints."""


import pytest
import torch

from tests.hf_models import save_tiny_qwen3_vl
from tests.mp import torchrun
from tests.test_convert import assert_roundtrip_is_bit_exact, convert, parity, vopd
from tests.test_qwen35 import _rewrite

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return save_tiny_qwen3_vl(tmp_path_factory.mktemp("hf3vl") / "tiny")


@pytest.fixture(scope="module")
def ckpt(hf, tmp_path_factory):
    return convert("hf-to-megatron", hf, tmp_path_factory.mktemp("mg3vl") / "tp1")


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)], ids=["tp1pp1", "tp2", "pp2", "tp2pp2"])
def test_roundtrip_is_bit_exact(hf, tmp_path, tp, pp):
    a = assert_roundtrip_is_bit_exact(hf, tmp_path, tp, pp, "Qwen3VLForConditionalGeneration")
    assert sum(".deepstack_merger_list." in n for n in a) == 3 * 6  # 3 mergers x 6 tensors


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2)], ids=["tp1", "tp2", "pp2"])
def test_logits_match_transformers(hf, ckpt, tp, pp):
    """The tiny model has 4 layers and deepstack after layers 0, 1, 2: at PP2 layer 2's deepstack row travels
    from the vision tower on stage 1 to stage 2 with the hidden states."""
    code, r = parity(hf, ckpt, tp, pp)
    assert r["logits_max_abs_diff"] <= 1e-4 and r["logits_abs_max"] > 1.0, r
    assert code == 0


def test_loss_and_grad_norm_match_at_pp2_with_recompute(tmp_path):
    """The deepstack gradient crosses the pipeline (layer 2's row back to the vision tower on stage 1) and
    survives activation recompute (the rows are the decoder block's ``context``, saved with each layer)."""
    ref = tmp_path / "tp1.pt"
    code, r, out = torchrun("megatron_vopd.checks.layouts", 1, "--model", "tiny-qwen3-vl", "--save", str(ref))
    assert code == 0 and r is not None, out[-4000:]
    code, r, out = torchrun("megatron_vopd.checks.layouts", 2, "--model", "tiny-qwen3-vl", "--pp", "2",
                            "--recompute", "--compare", str(ref))
    assert r is not None, out[-4000:]
    assert r["logits_max_abs_diff"] <= 1e-5 and r["loss_abs_diff"] <= 1e-5 and r["grad_norm_abs_diff"] <= 1e-5, r
    assert r["weights_roundtrip_max_abs_diff"] == 0.0 and code == 0, r


def test_a_missing_deepstack_tensor_is_named(hf, tmp_path):
    name = "model.visual.deepstack_merger_list.2.linear_fc2.weight"
    bad = _rewrite(hf, tmp_path / "bad", lambda w: w.pop(name))
    proc = vopd("convert", "hf-to-megatron", "--hf", str(bad), "--out", str(tmp_path / "mg"))
    assert proc.returncode == 2 and f"missing tensors (1): {name}" in proc.stderr, proc.stderr[-2000:]


def test_a_deepstack_shape_mismatch_is_named(hf, tmp_path):
    name = "model.visual.deepstack_merger_list.0.norm.weight"
    bad = _rewrite(hf, tmp_path / "bad", lambda w: w.update({name: w[name][:-4]}))
    proc = vopd("convert", "hf-to-megatron", "--hf", str(bad), "--out", str(tmp_path / "mg"))
    assert proc.returncode == 2 and f"shape mismatch for {name}" in proc.stderr, proc.stderr[-2000:]


def test_a_q_norm_shape_mismatch_is_named(hf, tmp_path):
    name = "model.language_model.layers.3.self_attn.q_norm.weight"
    bad = _rewrite(hf, tmp_path / "bad", lambda w: w.update({name: torch.ones(32)}))
    proc = vopd("convert", "hf-to-megatron", "--hf", str(bad), "--out", str(tmp_path / "mg"))
    assert proc.returncode == 2 and f"shape mismatch for {name}" in proc.stderr, proc.stderr[-2000:]
