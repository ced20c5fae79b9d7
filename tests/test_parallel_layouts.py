"""TP=2, PP=2 and TP2xPP2 under torchrun on gloo give the TP1xPP1 logits, loss and gradient norm
for the same weights and the same image+text batch (tiny Qwen2.5-VL, fp32)."""

import pytest

from tests.mp import torchrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("layouts") / "tp1pp1.pt"
    code, result, out = torchrun("megatron_vopd.checks.layouts", 1, "--save", str(path))
    assert code == 0 and result is not None, out[-4000:]
    assert result["loss"] > 0 and result["grad_norm"] > 0
    return path


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)], ids=["tp2", "pp2", "tp2pp2"])
def test_layout_matches_tp1pp1(reference, tp, pp):
    code, result, out = torchrun("megatron_vopd.checks.layouts", tp * pp, "--tp", str(tp), "--pp", str(pp), "--compare", str(reference))
    assert result is not None, out[-4000:]
    assert result["logits_max_abs_diff"] <= 1e-5, result
    assert result["loss_abs_diff"] <= 1e-5, result
    assert result["grad_norm_abs_diff"] <= 1e-5, result
    assert result["weights_roundtrip_max_abs_diff"] == 0.0, result
    assert code == 0, out[-4000:]
