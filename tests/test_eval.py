"""`vopd eval`: option-letter parsing, the two views as engine requests, accuracy bookkeeping with a
scripted engine, the plot, input errors, and (slow) an end-to-end run on two tiny checkpoints with vLLM."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from megatron_vopd.eval.accuracy import EvalItem, eval_items, evaluate, parse_choice
from megatron_vopd.eval.plot import plot_accuracy
from megatron_vopd.rollout.engine import RolloutEngine, RolloutRequest, Sample, StaleWeightsError
from megatron_vopd.runtime.torchrun import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("text,expected", [
    ("The color is blue. The answer is B.", "B"),
    ("B", "B"),
    ("B.", "B"),
    ("(C)", "C"),
    ("  a  ", "A"),
    ("answer: d", "D"),
    ("Answer: (A)", "A"),
    ("The correct answer is option C.", "C"),
    ("Answer: **D**", "D"),
    ("I first thought A, but the answer is C", "C"),
    ("A blue square... so D", "D"),
    ("It is B. blue", "B"),
    ("The answer is blue", None),
    ("blue", None),
    ("", None),
    ("a cat and a dog", None),
    ("<think>maybe A</think>The answer is B", "B"),
    ("E", None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


def test_parse_choice_respects_letters():
    assert parse_choice("so E", letters="ABCDE") == "E"
    assert parse_choice("so D", letters="ABC") is None


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from megatron_vopd.data.loader import load_records
    from megatron_vopd.data.synth import synthesize
    from megatron_vopd.data.tokenizer import load_tokenizer

    jsonl = synthesize(tmp_path_factory.mktemp("synth"), n=4, seed=0, size=224)
    records, meta = load_records(jsonl)
    return jsonl, records, meta, load_tokenizer("qwen2.5")


def test_eval_items_build_both_views_with_one_image_pad(synth):
    jsonl, records, meta, tok = synth
    items = eval_items(records, tokenizer=tok, family="qwen2.5", image_root=meta["image_root"], crop_margin=0.5,
                       min_crop_size=56)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert [it.id for it in items] == [r.id for r in records]
    assert [it.answer for it in items] == [r.answer for r in records]
    for it in items:
        assert it.full.prompt_token_ids == it.crop.prompt_token_ids
        assert it.full.prompt_token_ids.count(pad) == 1
        assert len(it.full.images) == len(it.crop.images) == 1
        (fw, fh), (cw, ch) = it.full.images[0].size, it.crop.images[0].size
        assert (fw, fh) == (224, 224) and cw * ch < fw * fh
        assert all(isinstance(t, int) for t in it.full.prompt_token_ids)
        assert "inside the red box" in tok.decode(it.full.prompt_token_ids)


class ScriptedEngine(RolloutEngine):
    """Answers each request with a fixed text chosen by the request's image (full vs crop)."""

    def __init__(self, tok, answers):
        self.tok, self.answers, self.calls, self.weight_version = tok, answers, [], 3

    def start(self):
        pass

    def shutdown(self):
        pass

    def update_weights(self, buckets, version):
        self.weight_version = version

    def generate(self, requests, sampling, *, weight_version):
        self.check_version(weight_version)
        self.calls.append((len(requests), sampling))
        return [[Sample(self.tok.encode(self.answers[r.images[0]]) + [151645], [0.0], "stop")] for r in requests]


def test_evaluate_counts_accuracy_per_view(synth):
    _, _, _, tok = synth
    # 5 items; full answers: right, wrong, unparsed, right, wrong; crop: all right but one unparsed
    truth = ["A", "B", "C", "D", "A"]
    full_txt = ["The answer is A.", "C", "I do not know", "(D)", "so B"]
    crop_txt = ["A", "The answer is B", "answer: c", "D.", "no idea"]
    items, answers = [], {}
    for i, ans in enumerate(truth):
        full, crop = f"full{i}", f"crop{i}"
        answers[full], answers[crop] = full_txt[i], crop_txt[i]
        items.append(EvalItem(str(i), ans, RolloutRequest([1, 2], [full]), RolloutRequest([1, 2], [crop])))
    engine = ScriptedEngine(tok, answers)
    logs = []
    r = evaluate(engine, items, weight_version=3, max_tokens=7, tokenizer=tok, batch_size=2, log=logs.append)
    assert r.n == 5
    assert r.full_acc == pytest.approx(2 / 5) and r.crop_acc == pytest.approx(4 / 5)
    assert r.gap == pytest.approx(r.crop_acc - r.full_acc)
    assert (r.full_unparsed, r.crop_unparsed) == (1, 1)
    assert r.answer_counts == {"full": {"A": 1, "B": 1, "C": 1, "D": 1, "none": 1},
                               "crop": {"A": 1, "B": 1, "C": 1, "D": 1, "none": 1}}
    assert [n for n, _ in engine.calls] == [4, 4, 2]  # 2 views x batches of 2, 2, 1 items
    spec = engine.calls[0][1]
    assert (spec.n, spec.temperature, spec.max_tokens) == (1, 0.0, 7)
    assert len(logs) == 3 and "5/5" in logs[-1]
    assert [p["full_choice"] for p in r.predictions] == ["A", "C", None, "D", "B"]
    d = r.to_dict()
    assert "predictions" not in d and json.loads(json.dumps(d))["crop_acc"] == pytest.approx(0.8)
    with pytest.raises(StaleWeightsError):
        evaluate(engine, items, weight_version=4, max_tokens=7, tokenizer=tok, log=None)


def test_plot_writes_a_png(tmp_path):
    rows = [{"step": s, "n": 8, "full_acc": f, "crop_acc": c, "gap": c - f}
            for s, f, c in [(0, 0.25, 0.75), (50, 0.5, 0.75), (100, 0.625, 0.75)]]
    out = plot_accuracy(rows, tmp_path / "sub" / "eval.png")
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    one = plot_accuracy(rows[:1], tmp_path / "one.png")  # a single checkpoint plots too
    assert one.read_bytes()[:8] == PNG_MAGIC


def _fake_checkpoint(path):
    from megatron_vopd.config import ModelConfig, to_dict

    path.mkdir(parents=True)
    (path / "metadata.json").write_text("{}")
    (path / "vopd_model.yaml").write_text(yaml.safe_dump(to_dict(ModelConfig()), sort_keys=False))
    return path


def test_resolve_checkpoints_orders_iter_folders_by_step(tmp_path):
    from megatron_vopd.commands.eval import EvalInputError, resolve_checkpoints

    for name in ("iter_0000100", "iter_0000020", "iter_0000003"):
        _fake_checkpoint(tmp_path / "run" / name)
    (tmp_path / "run" / "iter_0000200.tmp").mkdir()  # an unfinished save is ignored
    (tmp_path / "run" / "logs").mkdir()
    got = resolve_checkpoints([str(tmp_path / "run")])
    assert [s for s, _ in got] == [3, 20, 100]
    single = _fake_checkpoint(tmp_path / "final")
    assert resolve_checkpoints([str(single), str(tmp_path / "run" / "iter_0000020")]) == \
        [(0, single), (20, tmp_path / "run" / "iter_0000020")]
    with pytest.raises(EvalInputError, match="not a Megatron checkpoint"):
        resolve_checkpoints([str(tmp_path / "run" / "logs")])


def test_bad_inputs_exit_2_naming_the_path(tmp_path, capsys, synth):
    from megatron_vopd.cli import main

    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    missing = tmp_path / "nope.parquet"
    assert main(["eval", "--ckpt", str(ckpt), "--data", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
    notckpt = tmp_path / "empty"
    notckpt.mkdir()
    assert main(["eval", "--ckpt", str(notckpt), "--data", str(synth[0]), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(notckpt) in err and "not a Megatron checkpoint" in err
    assert main(["eval", "--ckpt", str(tmp_path / "absent"), "--data", str(synth[0]), "--out", str(tmp_path / "o")]) == 2
    assert str(tmp_path / "absent") in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


MAKE_CKPTS = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from megatron_vopd.bridge.megatron_ckpt import save_model
    from megatron_vopd.config import ParallelConfig, load_model_config
    from megatron_vopd.models.qwen25_vl.model import build_model
    from megatron_vopd.checks.sync import perturb
    from megatron_vopd.runtime import destroy_distributed, init_distributed

    root = Path(sys.argv[1])
    cfg = load_model_config("tiny-qwen2.5-vl")
    cfg.transformer_impl = "local"
    init_distributed(1, 1, seed=0)
    model = build_model(cfg, ParallelConfig())
    save_model(model, root / "iter_0000000", cfg)
    perturb(model, seed=1, scale=0.05)
    save_model(model, root / "iter_0000001", cfg)
    destroy_distributed()
""")


@pytest.mark.slow
def test_vopd_eval_end_to_end_two_checkpoints(tmp_path, synth):
    """Two checkpoints through two engines (``--engines 2``: two processes, the questions split over them)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    root = tmp_path / "run"
    made = subprocess.run([sys.executable, "-c", MAKE_CKPTS, str(root)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-4000:]
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "megatron_vopd.cli", "eval", "--ckpt", str(root), "--data",
                           str(synth[0]), "--out", str(out), "--config", "configs/demo.yaml", "--limit", "4",
                           "--max-tokens", "8", "--engines", "2", "rollout.max_model_len=512"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    rows = json.loads((out / "eval.json").read_text())
    assert [r["step"] for r in rows] == [0, 1]
    assert [os.path.basename(r["ckpt"]) for r in rows] == ["iter_0000000", "iter_0000001"]
    for r in rows:
        assert r["n"] == 4
        assert 0.0 <= r["full_acc"] <= 1.0 and 0.0 <= r["crop_acc"] <= 1.0
        assert r["gap"] == pytest.approx(r["crop_acc"] - r["full_acc"])
        assert sum(r["answer_counts"]["full"].values()) == sum(r["answer_counts"]["crop"].values()) == 4
    assert (out / "eval.png").read_bytes()[:8] == PNG_MAGIC
    assert "synced" in log  # the second checkpoint went to the running engines, not new ones
    assert "2 vLLM engines (TP 1)" in log
    preds = [[json.loads(line) for line in open(out / f"predictions_{n}.jsonl")] for n in ("iter_0000000", "iter_0000001")]
    assert all(len(p) == 4 for p in preds)
    # the perturbed weights reached the engine: its greedy responses changed
    assert [p["full_text"] for p in preds[0]] != [p["full_text"] for p in preds[1]]


def test_parse_choice_matches_option_text_when_no_letter():
    options = ("red", "light blue", "blue", "green")
    assert parse_choice("The color is blue.", options=options) == "C"
    assert parse_choice("The color is light blue.", options=options) == "B"
    assert parse_choice("Green, not red.", options=options) == "A"  # the option named last wins
    assert parse_choice("The color is purple.", options=options) is None
    assert parse_choice("The answer is D. It is blue.", options=options) == "D"  # a letter wins over text
