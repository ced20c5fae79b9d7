"""NeMo-Run launch recipes and executors for megatron-vopd (run in .venv-launcher: python -m launch.run)."""

try:
    import nemo_run  # noqa: F401
except ImportError as e:  # the runtime env (.venv) or a bare python: NeMo-Run lives in its own env
    raise SystemExit("launch/ runs in the launcher environment: .venv-launcher/bin/python -m launch.run ... "
                     "(`make setup` or tools/setup_launcher_env.sh builds it)") from e
