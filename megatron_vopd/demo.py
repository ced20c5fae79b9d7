"""The demo. Until the trainer lands it is the model check of the foundation: the tiny Qwen2.5-VL
(real architecture and vocabulary, random weights) gives the same logits, loss and gradient norm
at TP=2, PP=2 and TP2xPP2 as at TP1xPP1, each layout a real torchrun world on gloo."""

from __future__ import annotations

import tempfile
import time

from megatron_vopd.runtime.torchrun import torchrun

LAYOUTS = ((2, 1), (1, 2), (2, 2))
TOLERANCE = 1e-5


def run_demo(model: str = "tiny-qwen2.5-vl") -> int:
    check = "megatron_vopd.models.layout_check"
    with tempfile.TemporaryDirectory() as tmp:
        ref = f"{tmp}/tp1pp1.pt"
        t0 = time.time()
        print(f"[demo] TP1xPP1 reference: {model}, image+text batch, fp32 ...", flush=True)
        code, base, out = torchrun(check, 1, "--model", model, "--save", ref)
        if code or base is None:
            print(out[-4000:])
            return 1
        print(f"[demo]   loss {base['loss']:.6f}  grad norm {base['grad_norm']:.6f}  ({time.time() - t0:.0f}s)")
        rows, ok = [], True
        for tp, pp in LAYOUTS:
            t0 = time.time()
            print(f"[demo] TP{tp}xPP{pp} on {tp * pp} processes ...", flush=True)
            code, r, out = torchrun(check, tp * pp, "--model", model, "--tp", str(tp), "--pp", str(pp), "--compare", ref)
            if r is None:
                print(out[-4000:])
                return 1
            ok &= code == 0
            rows.append((f"TP{tp}xPP{pp}", r["logits_max_abs_diff"], r["loss_abs_diff"], r["grad_norm_abs_diff"],
                         r["weights_roundtrip_max_abs_diff"], time.time() - t0))
    print("\nlayout      max|dlogits|  |dloss|      |dgrad norm|  weights round-trip  seconds")
    for name, dl, dloss, dg, dw, sec in rows:
        print(f"{name:<10}  {dl:<12.3e}  {dloss:<11.3e}  {dg:<12.3e}  {dw:<18.1e}  {sec:.0f}")
    verdict = "PASS: every layout is" if ok else "FAIL: not every layout is"
    print(f"\n[demo] {verdict} within {TOLERANCE:g} of TP1xPP1 (weights round-trip exact)")
    return 0 if ok else 1
