"""Run a torchrun worker from a test (or the demo) and read back the JSON line it prints after "RESULT "."""

from megatron_vopd.runtime.torchrun import ROOT, torchrun  # noqa: F401

WORKERS = ROOT / "tests" / "workers"
