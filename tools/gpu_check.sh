#!/usr/bin/env bash
# GPU smoke check of the CUDA path (run it on one GPU node, e.g. inside the GPU image):
#   1. a tiny random Qwen2.5-VL (transformers) -> `vopd convert hf-to-megatron` -> Megatron on CUDA
#      (nccl, no CPU shims) gives transformers' logits (fp32);
#   2. `vopd data synth` + 10 crop-SFT training steps on CUDA through the trainer (checkpoint + resume);
#   3. Transformer Engine: the layer spec `auto` resolves to, and FP8 accepted or refused with the message.
# Prints one RESULT line per part. Usage: tools/gpu_check.sh [WORKDIR]   (default /tmp/vopd-gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/vopd-gpu-check}
PY=${PYTHON:-python}
rm -rf "$W" && mkdir -p "$W"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::UserWarning
$PY -c "import torch, megatron.core, transformers; assert torch.cuda.is_available(), 'no CUDA device'; print('[gpu-check]', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| megatron-core', megatron.core.__version__, '| transformers', transformers.__version__)"

echo "[gpu-check] 1/3 HF -> Megatron parity on CUDA"
$PY -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from tests.hf_models import save_tiny_qwen25_vl; save_tiny_qwen25_vl(Path('$W/hf'))"
$PY -m megatron_vopd.cli convert hf-to-megatron --hf "$W/hf" --out "$W/mg"
failed=0
torchrun --standalone --nproc-per-node 1 -m megatron_vopd.bridge.hf_parity --hf "$W/hf" --ckpt "$W/mg" | grep RESULT \
  || { echo "[gpu-check] parity FAILED"; failed=1; }

echo "[gpu-check] 2/3 crop-SFT on CUDA: 10 steps straight vs 5 + resume + 5"
$PY -m megatron_vopd.cli data synth --out "$W/data" --n 64 --size 224 --answer-format color > /dev/null
sft() {  # sft RUN_DIR STEPS: appends the run's RESULT line to RUN_DIR.results
  mkdir -p "$1"
  torchrun --standalone --nproc-per-node 1 -m megatron_vopd.train.trainer configs/demo-warmup.yaml \
    data.train_file="$W/data/train.jsonl" data.eval_file=null checkpoint.dir="$1" checkpoint.save_interval=5 \
    optimizer.train_steps="$2" | grep -E "^step|RESULT|resum" | tee -a "$1.log" | grep -v RESULT || true
  grep RESULT "$1.log" | tail -1 >> "$1.results"
}
sft "$W/straight" 10
sft "$W/resumed" 5
sft "$W/resumed" 10
$PY - "$W" <<'PYEOF'
import json, sys
def losses(run):
    out = {}
    for line in open(f"{sys.argv[1]}/{run}.results"):
        r = json.loads(line[len("RESULT "):])
        out.update(zip(r["steps"], r["losses"]))
    return out
straight, resumed = losses("straight"), losses("resumed")
assert sorted(straight) == sorted(resumed) == list(range(1, 11)), (straight, resumed)
diff = max(abs(straight[s] - resumed[s]) for s in straight)
print("RESULT " + json.dumps({"resume_max_abs_loss_diff": diff, "loss_step1": straight[1], "loss_step10": straight[10]}))
PYEOF

echo "[gpu-check] 3/3 Transformer Engine and FP8"
$PY - <<'PYEOF'
import json
from megatron_vopd.config import ConfigError, load_config, resolve_transformer_impl, transformer_engine_available
te = transformer_engine_available()
cfg = load_config("configs/scaleout/qwen2.5-vl-7b.yaml")
try:
    load_config("configs/scaleout/qwen2.5-vl-7b.yaml", ["model.fp8=hybrid", "model.fp8_recipe=tensorwise"])
    fp8 = "accepted"
except ConfigError as e:
    fp8 = str(e).splitlines()[-1].strip()
print("RESULT " + json.dumps({"transformer_engine": te, "auto_impl": resolve_transformer_impl(cfg.model, te), "fp8": fp8}))
PYEOF
exit $failed
