# The two commands of the README. Both create or refresh .venv first (idempotent, fast when unchanged).
.PHONY: setup demo test test-fast bench clean

setup:
	@tools/setup_env.sh

demo: setup
	.venv/bin/vopd demo

test: setup
	.venv/bin/python -m pytest -q -ra

test-fast: setup
	.venv/bin/python -m pytest -q -ra -m "not slow"

bench: setup
	.venv/bin/python bench/mfu.py

clean:
	rm -rf .venv
