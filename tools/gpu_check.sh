#!/usr/bin/env bash
# GPU smoke check of the CUDA path (run it on one GPU node, e.g. inside the GPU image):
#   1. a tiny random Qwen2.5-VL (transformers) -> `vopd convert hf-to-megatron` -> Megatron on CUDA
#      (nccl, no CPU shims) gives transformers' logits (fp32);
#   2. `vopd data synth` + 10 crop-SFT training steps on CUDA through the trainer (checkpoint + resume);
#   3. Transformer Engine: the layer spec `auto` resolves to, and FP8 accepted or refused with the message;
#   4. the users' precision path: bf16 parameters, Megatron DDP (fp32 main grads) and the distributed
#      optimizer (fp32 masters): 10 crop-SFT steps, losses close to part 2's fp32 run, resume exact;
#   5. Qwen3.5 (Gated DeltaNet, fla/causal-conv1d kernels): a tiny random one -> `vopd convert` -> Megatron
#      with the layer spec `auto` resolves to (the TE hybrid spec where TE is installed) gives transformers'
#      logits (fp32);
#   6. Qwen3-VL (deepstack): the same with its layer spec (TE's GPT layer with q/k norms as a DeepstackLayer
#      where TE is installed);
#   7. where vLLM is installed (the GPU image): the rollout sync check on CUDA with vLLM's sleep mode
#      (rollout.sleep=1): the engine frees its GPU memory, wakes, takes the synced weights and samples
#      with Megatron's log-probs.
# Prints one RESULT line per part. Usage: tools/gpu_check.sh [WORKDIR]   (default /tmp/vopd-gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/vopd-gpu-check}
PY=${PYTHON:-python}
rm -rf "$W" && mkdir -p "$W"
cat > "$W/losses.py" <<'PYEOF'
import json, sys
def losses(run):  # {step: loss} of RUN's RESULT lines (a resumed run appends one line per invocation)
    out = {}
    for line in open(f"{sys.argv[1]}/{run}.results"):
        r = json.loads(line[len("RESULT "):])
        out.update(zip(r["steps"], r["losses"]))
    return out
PYEOF
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::UserWarning
$PY -c "import torch, megatron.core, transformers; assert torch.cuda.is_available(), 'no CUDA device'; print('[gpu-check]', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| megatron-core', megatron.core.__version__, '| transformers', transformers.__version__)"

echo "[gpu-check] 1/7 HF -> Megatron parity on CUDA"
$PY -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from tests.hf_models import TINY_HF; TINY_HF['qwen2.5-vl'](Path('$W/hf'))"
$PY -m megatron_vopd.cli convert hf-to-megatron --hf "$W/hf" --out "$W/mg"
failed=0
torchrun --standalone --nproc-per-node 1 -m megatron_vopd.checks.hf_parity --hf "$W/hf" --ckpt "$W/mg" | grep RESULT \
  || { echo "[gpu-check] parity FAILED"; failed=1; }

echo "[gpu-check] 2/7 crop-SFT on CUDA: 10 steps straight vs 5 + resume + 5"
$PY -m megatron_vopd.cli data synth --out "$W/data" --n 64 --size 224 --answer-format color > /dev/null
sft() {  # sft RUN_DIR STEPS [KEY=VALUE ...]: appends the run's RESULT line to RUN_DIR.results
  local run=$1 steps=$2
  shift 2
  mkdir -p "$run"
  torchrun --standalone --nproc-per-node 1 -m megatron_vopd.train.trainer configs/demo-warmup.yaml \
    data.train_file="$W/data/train.jsonl" data.eval_file=null checkpoint.dir="$run" checkpoint.save_interval=5 \
    optimizer.train_steps="$steps" "$@" | grep -E "^step|RESULT|resum|parameters;" | tee -a "$run.log" | grep -v RESULT || true
  grep RESULT "$run.log" | tail -1 >> "$run.results"
}
sft "$W/straight" 10
sft "$W/resumed" 5
sft "$W/resumed" 10
$PY - "$W" <<'PYEOF'
import json, sys
sys.path.insert(0, sys.argv[1])
from losses import losses
straight, resumed = losses("straight"), losses("resumed")
assert sorted(straight) == sorted(resumed) == list(range(1, 11)), (straight, resumed)
diff = max(abs(straight[s] - resumed[s]) for s in straight)
print("RESULT " + json.dumps({"resume_max_abs_loss_diff": diff, "loss_step1": straight[1], "loss_step10": straight[10]}))
PYEOF

echo "[gpu-check] 3/7 Transformer Engine and FP8"
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

echo "[gpu-check] 4/7 bf16 + Megatron DDP + distributed optimizer: 10 steps vs fp32 (part 2), 5 + resume + 5"
# the distributed optimizer needs TE's or apex's FusedAdam on CUDA (the GPU image has them); else the bf16 one
DIST=$($PY -c "from megatron_vopd.train.optim import fused_adam_source as f; print('true' if f() else 'false')")
echo "[gpu-check] FusedAdam available: $DIST -> optimizer.distributed=$DIST"
BF16=(model.params_dtype=bfloat16 optimizer.distributed=$DIST optimizer.overlap_grad_reduce=true)
sft "$W/bf16" 10 "${BF16[@]}"
sft "$W/bf16_resumed" 5 "${BF16[@]}"
sft "$W/bf16_resumed" 10 "${BF16[@]}"
$PY - "$W" <<'PYEOF'
import json, sys
sys.path.insert(0, sys.argv[1])
from losses import losses
fp32, bf16, resumed = losses("straight"), losses("bf16"), losses("bf16_resumed")
assert sorted(bf16) == sorted(resumed) == list(range(1, 11)), (bf16, resumed)
print("RESULT " + json.dumps({
    "bf16_vs_fp32_max_rel_loss_diff": max(abs(bf16[s] - fp32[s]) / abs(fp32[s]) for s in fp32),
    "bf16_resume_max_abs_loss_diff": max(abs(bf16[s] - resumed[s]) for s in bf16),
    "bf16_loss_step1": bf16[1], "bf16_loss_step10": bf16[10]}))
PYEOF

echo "[gpu-check] 5/7 Qwen3.5 HF -> Megatron parity on CUDA (TE hybrid spec where TE is installed)"
$PY -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from tests.hf_models import TINY_HF; TINY_HF['qwen3.5'](Path('$W/hf35'))"
$PY -m megatron_vopd.cli convert hf-to-megatron --hf "$W/hf35" --out "$W/mg35"
torchrun --standalone --nproc-per-node 1 -m megatron_vopd.checks.hf_parity --hf "$W/hf35" --ckpt "$W/mg35" | grep RESULT \
  || { echo "[gpu-check] Qwen3.5 parity FAILED"; failed=1; }

echo "[gpu-check] 6/7 Qwen3-VL HF -> Megatron parity on CUDA (TE layer spec where TE is installed)"
$PY -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from tests.hf_models import TINY_HF; TINY_HF['qwen3-vl'](Path('$W/hf3vl'))"
$PY -m megatron_vopd.cli convert hf-to-megatron --hf "$W/hf3vl" --out "$W/mg3vl"
torchrun --standalone --nproc-per-node 1 -m megatron_vopd.checks.hf_parity --hf "$W/hf3vl" --ckpt "$W/mg3vl" | grep RESULT \
  || { echo "[gpu-check] Qwen3-VL parity FAILED"; failed=1; }

echo "[gpu-check] 7/7 vLLM on CUDA: weight sync, sleep level 1, log-probs after waking"
if $PY -c "import vllm" 2>/dev/null; then
  torchrun --standalone --nproc-per-node 1 -m megatron_vopd.checks.sync --tp 1 --sleep 1 --greedy-vs-transformers --workdir "$W/sync" \
    | grep RESULT || { echo "[gpu-check] sync with sleep FAILED"; failed=1; }
else
  echo "[gpu-check] 7/7 skipped: vllm is not installed here (the GPU image has it)"
fi
exit $failed
