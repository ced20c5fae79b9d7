"""HF <-> Megatron conversion on tiny random Qwen2.5-VL checkpoints built with transformers:
bit-exact round trips at every layout, logits equal to transformers', layout-free checkpoints,
and clear errors. Conversions run through the real `vopd convert` command (torchrun for TP/PP > 1)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from megatron_vopd.bridge.hf_io import HFCheckpoint
from megatron_vopd.runtime.torchrun import ROOT, torchrun
from tests.hf_models import save_tiny_qwen25_vl

pytestmark = pytest.mark.slow


def vopd(*args, timeout=600):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "megatron_vopd.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def convert(direction, src, out, tp=1, pp=1, *extra):
    flag = "--hf" if direction == "hf-to-megatron" else "--ckpt"
    proc = vopd("convert", direction, flag, str(src), "--out", str(out), "--tp", str(tp), "--pp", str(pp), *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def parity(hf, ckpt, tp=1, pp=1, *extra):
    code, result, out = torchrun("megatron_vopd.checks.hf_parity", tp * pp, "--hf", str(hf), "--ckpt", str(ckpt),
                                 "--tp", str(tp), "--pp", str(pp), *extra)
    assert result is not None, out[-4000:]
    return code, result


@pytest.fixture(scope="module")
def hf_untied(tmp_path_factory):
    return save_tiny_qwen25_vl(tmp_path_factory.mktemp("hf") / "untied", tied=False)


@pytest.fixture(scope="module")
def ckpt_tp2(hf_untied, tmp_path_factory):
    return convert("hf-to-megatron", hf_untied, tmp_path_factory.mktemp("mg") / "tp2", 2, 1)


def tensors(folder):
    ck = HFCheckpoint(folder)
    return {name: ck.get(name) for name in ck.names()}


def assert_roundtrip_is_bit_exact(hf, out, tp: int, pp: int, architecture: str) -> dict:
    """HF -> Megatron -> HF at TP x PP (``checks.roundtrip``: the two conversions of `vopd convert`, one
    process start): every tensor equal, same dtype, same names; the original's tensors are returned."""
    code, r, log = torchrun("megatron_vopd.checks.roundtrip", tp * pp, "--hf", str(hf), "--out", str(out),
                            "--tp", str(tp), "--pp", str(pp))
    assert code == 0 and r is not None, log[-4000:]
    a, b = tensors(hf), tensors(r["hf"])
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    assert json.loads((out / "hf" / "config.json").read_text())["architectures"] == [architecture]
    return a


def test_cli_roundtrip_is_bit_exact(hf_untied, tmp_path):
    """The same through the `vopd convert` command (both directions)."""
    back = convert("megatron-to-hf", convert("hf-to-megatron", hf_untied, tmp_path / "mg"), tmp_path / "hf")
    a, b = tensors(hf_untied), tensors(back)
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) and a[n].dtype == b[n].dtype for n in a)


# TP2 x PP2 shards every tensor over TP and every layer over stages (TP2 and PP2 alone: the Qwen3-VL tests)
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)], ids=["tp1pp1", "tp2pp2"])
def test_roundtrip_is_bit_exact(hf_untied, tmp_path, tp, pp):
    assert_roundtrip_is_bit_exact(hf_untied, tmp_path, tp, pp, "Qwen2_5_VLForConditionalGeneration")


def test_logits_match_transformers_untied_gqa_tp2(hf_untied, ckpt_tp2):
    code, r = parity(hf_untied, ckpt_tp2, 2, 1)
    assert r["logits_max_abs_diff"] <= 1e-4 and r["logits_abs_max"] > 1.0, r
    assert code == 0


def test_tp2_checkpoint_gives_transformers_logits_identically_at_tp1_and_pp2(hf_untied, ckpt_tp2, tmp_path):
    """The checkpoint written at TP2 loads at TP1 and at PP2; both give transformers' logits, bit-identically."""
    results = [parity(hf_untied, ckpt_tp2, tp, pp, "--save-logits", str(tmp_path / f"{name}.pt"))
               for name, tp, pp in (("tp1", 1, 1), ("pp2", 1, 2))]
    for code, r in results:
        assert code == 0 and r["logits_max_abs_diff"] <= 1e-4 and r["logits_abs_max"] > 1.0, r
    assert torch.equal(torch.load(tmp_path / "tp1.pt"), torch.load(tmp_path / "pp2.pt"))


def test_logits_match_transformers_tied_pp2(tmp_path):
    """Tied embeddings at PP2 (the output layer on the last stage shares the first stage's embedding):
    transformers' logits, and the export writes no lm_head."""
    base = tmp_path
    hf = save_tiny_qwen25_vl(base / "hf", tied=True)
    ckpt = convert("hf-to-megatron", hf, base / "mg", 1, 2)
    code, r = parity(hf, ckpt, 1, 2)
    assert r["logits_max_abs_diff"] <= 1e-4, r
    with safe_open(convert("megatron-to-hf", ckpt, base / "back") / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()


def test_logits_match_transformers_full_attention_heads_tp2(tmp_path):
    hf = save_tiny_qwen25_vl(tmp_path / "hf", kv_heads=4)
    code, r = parity(hf, convert("hf-to-megatron", hf, tmp_path / "mg"), 2, 1)
    assert r["logits_max_abs_diff"] <= 1e-4, r


# --- errors ---------------------------------------------------------------------------------

def failing(*args):
    proc = vopd(*args)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stderr


def test_output_holding_a_checkpoint_is_refused_without_overwrite(hf_untied, ckpt_tp2):
    err = failing("convert", "hf-to-megatron", "--hf", str(hf_untied), "--out", str(ckpt_tp2))
    assert "already holds files" in err and "--overwrite" in err


def test_tp_not_dividing_heads_is_refused(hf_untied, tmp_path):
    err = failing("convert", "hf-to-megatron", "--hf", str(hf_untied), "--out", str(tmp_path / "o"), "--tp", "3")
    assert "--tp 3 must divide model.num_attention_heads" in err and "parallel." not in err


def test_missing_and_unexpected_tensors_are_listed(hf_untied, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((hf_untied / "config.json").read_text())
    t = tensors(hf_untied)
    t["model.extra.weight"] = t.pop("model.layers.1.mlp.up_proj.weight")
    save_file(t, bad / "model.safetensors")
    err = failing("convert", "hf-to-megatron", "--hf", str(bad), "--out", str(tmp_path / "o"))
    assert "missing tensors (1): model.layers.1.mlp.up_proj.weight" in err
    assert "unexpected tensors (1): model.extra.weight" in err


def test_shape_mismatch_names_tensor_expected_and_found(hf_untied, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((hf_untied / "config.json").read_text())
    t = tensors(hf_untied)
    t["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(128, 96)
    save_file(t, bad / "model.safetensors")
    err = failing("convert", "hf-to-megatron", "--hf", str(bad), "--out", str(tmp_path / "o"))
    assert "shape mismatch for model.layers.0.self_attn.o_proj.weight: expected (128, 128), found (128, 96)" in err


def test_exported_folder_loads_in_transformers_with_processor(hf_untied, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    back = convert("megatron-to-hf", convert("hf-to-megatron", hf_untied, tmp_path / "mg"), tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(back)
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    model = AutoModelForImageTextToText.from_pretrained(back)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
