"""NeMo-Run launch recipes and executors for megatron-vopd (run in .venv-launcher: python -m launch.run)."""
