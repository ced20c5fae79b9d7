"""The LLM judge of undecided answers: any OpenAI-compatible chat endpoint (``vopd serve``, a vLLM server).

    judge = OpenAIJudge("http://127.0.0.1:8000/v1")       # the model: --judge-model, else the server's first
    reply = judge("Your task is to judge ...")             # "Yes" / "No" / whatever the judge says

As the reference asks it: one user message, temperature 0, at most 2048 tokens, three attempts; when
every attempt fails the verdict is "No" (and the failure is counted in ``failures``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


class JudgeError(RuntimeError):
    pass


class OpenAIJudge:
    def __init__(self, url: str, model: str | None = None, *, max_tokens: int = 2048, attempts: int = 3,
                 timeout_s: float = 600):
        self.base = url.rstrip("/") if url.rstrip("/").endswith("/v1") else url.rstrip("/") + "/v1"
        self.max_tokens, self.attempts, self.timeout_s = max_tokens, attempts, timeout_s
        self.model = model or self._first_model()
        self.failures = 0

    def _request(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            return json.loads(resp.read().decode())

    def _first_model(self) -> str:
        try:
            models = self._request("/models")["data"]
        except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
            raise JudgeError(f"--judge {self.base}: cannot list the server's models ({e})") from None
        if not models:
            raise JudgeError(f"--judge {self.base}: the server serves no model")
        return models[0]["id"]

    def __call__(self, prompt: str) -> str:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": self.max_tokens}
        for attempt in range(self.attempts):
            try:
                return self._request("/chat/completions", body)["choices"][0]["message"]["content"] or ""
            except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError):
                if attempt + 1 < self.attempts:
                    time.sleep(1)
        self.failures += 1
        return "No"
