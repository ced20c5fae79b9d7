"""``vopd serve --ckpt DIR``: serve an exported Hugging Face checkpoint through vLLM's OpenAI-compatible server.

vLLM's API server runs as a child; this process prints one "ready" line once the server answers,
passes SIGTERM / Ctrl-C on to it (it stops cleanly) and exits with its exit code. vLLM logs at WARNING
(``VLLM_LOGGING_LEVEL`` overrides). A Megatron checkpoint is refused with the command that exports it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve an exported HF checkpoint with vLLM's OpenAI-compatible server")
    p.add_argument("--ckpt", required=True, help="Hugging Face folder (e.g. written by `vopd convert megatron-to-hf`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--dtype", default="auto", help="weight/compute dtype (auto: the checkpoint's, from its config.json)")
    p.add_argument("--max-model-len", type=int, default=8192, help="context length: prompt + answer tokens (default 8192)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs the model is split over (default 1)")
    p.add_argument("--served-model-name", help="model name clients send (default: the folder name)")
    p.add_argument("--kv-cache-gib", type=int, default=4, help="KV cache on CPU (VLLM_CPU_KVCACHE_SPACE)")
    p.set_defaults(func=run)


def checkpoint_dtype(ckpt: Path) -> str:
    """The dtype config.json records (``dtype``, or the older ``torch_dtype``); "auto" when it records none.
    vLLM's own "auto" would serve a float32 checkpoint in bfloat16 on the CPU."""
    import json

    config = json.loads((ckpt / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "auto")


def server_command(args) -> list[str]:
    dtype = checkpoint_dtype(Path(args.ckpt)) if args.dtype == "auto" else args.dtype
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(Path(args.ckpt).resolve()),
           "--host", args.host, "--port", str(args.port), "--dtype", dtype,
           "--max-model-len", str(args.max_model_len), "--tensor-parallel-size", str(args.tensor_parallel_size),
           "--served-model-name", args.served_model_name or Path(args.ckpt).resolve().name,
           "--limit-mm-per-prompt", '{"image": 1}']
    if not _cuda():
        cmd.append("--enforce-eager")
    return cmd


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args) -> int:
    ckpt = Path(args.ckpt)
    if (ckpt / "vopd_model.yaml").is_file():
        print(f"error: {ckpt} is a Megatron checkpoint; export it first: "
              f"vopd convert megatron-to-hf --ckpt {ckpt} --out {ckpt}-hf", file=sys.stderr)
        return 2
    if not (ckpt / "config.json").is_file():
        print(f"error: {ckpt} has no config.json: not a Hugging Face checkpoint folder", file=sys.stderr)
        return 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib),
           # vLLM's start-up INFO lines (~190) bury the one that matters; VLLM_LOGGING_LEVEL=INFO brings them back
           "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    cmd = server_command(args)
    url = f"http://{args.host}:{args.port}/v1"
    print(f"[serve] starting vLLM's OpenAI-compatible server for {ckpt} on {url} (start-up takes a minute or more)",
          flush=True)
    proc = subprocess.Popen(cmd, env=env)
    # SIGTERM / Ctrl-C go to the server, which shuts down cleanly; its exit code is ours
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: proc.send_signal(signum))
    t0 = time.monotonic()
    while proc.poll() is None:
        if _healthy(f"http://{args.host}:{args.port}/health"):
            name = args.served_model_name or ckpt.resolve().name
            print(f"[serve] ready after {time.monotonic() - t0:.0f}s: {url} serves model {name!r}", flush=True)
            break
        time.sleep(2)
    return proc.wait()


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
