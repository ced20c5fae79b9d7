"""`vopd serve` answers a chat request with an image on 127.0.0.1 and stops cleanly on SIGTERM."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from megatron_vopd.runtime.torchrun import ROOT
from tests.hf_models import save_tiny_qwen25_vl

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status


def test_serve_answers_a_chat_request_with_an_image_and_stops_on_sigterm(tmp_path):
    from megatron_vopd.architecture import architecture

    ckpt = save_tiny_qwen25_vl(tmp_path / "tiny")
    architecture("qwen2.5-vl").save_processor(ckpt)
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "megatron_vopd.cli", "serve", "--ckpt", str(ckpt), "--port", str(port),
                             "--max-model-len", "2048", "--kv-cache-gib", "1", "--served-model-name", "tiny"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 900
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                if _get(f"http://127.0.0.1:{port}/health") == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "server did not come up"
            time.sleep(3)
        buf = io.BytesIO()
        Image.fromarray((np.random.RandomState(0).rand(112, 112, 3) * 255).astype("uint8")).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        body = {"model": "tiny", "max_tokens": 5, "temperature": 0,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                          {"type": "text", "text": "What is in the red box?"}]}]}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            reply = json.loads(r.read())
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["usage"]["completion_tokens"] >= 1 and reply["usage"]["prompt_tokens"] > 16  # image tokens counted
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    text = (tmp_path / "serve.log").read_text()
    assert "Downcasting" not in text  # --dtype auto: the checkpoint's float32
    assert "[serve] ready after" in text and "serves model 'tiny'" in text
    print(f"{len(text.splitlines())} lines of output:", text[-3000:])


def test_serve_refuses_a_megatron_checkpoint(tmp_path):
    (tmp_path / "vopd_model.yaml").write_text("arch: qwen2.5-vl\n")
    proc = subprocess.run([sys.executable, "-m", "megatron_vopd.cli", "serve", "--ckpt", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "vopd convert megatron-to-hf" in proc.stderr
