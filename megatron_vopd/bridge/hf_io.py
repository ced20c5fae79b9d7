"""Reading and writing Hugging Face safetensors checkpoints, one tensor at a time.

``HFCheckpoint`` opens a folder (one ``model.safetensors`` or shards with an index) and reads
tensors lazily by name. ``ShardedSafetensorsWriter`` writes a stream of (name, tensor) into shards
of at most ``shard_bytes`` plus ``model.safetensors.index.json``, holding one shard in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class HFCheckpoint:
    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index, single = self.dir / INDEX, self.dir / SINGLE
        if index.is_file():
            self.file_of = {k: self.dir / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        elif single.is_file():
            with safe_open(single, "pt") as f:
                self.file_of = {k: single for k in f.keys()}
        else:
            raise FileNotFoundError(f"{self.dir}: neither {INDEX} nor {SINGLE} found")
        self._open: dict[Path, object] = {}

    def names(self) -> set[str]:
        return set(self.file_of)

    def _handle(self, path: Path):
        if path not in self._open:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {self.dir / INDEX} but missing")
            self._open[path] = safe_open(path, "pt")
        return self._open[path]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(self.file_of[name]).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        try:
            path = self.file_of[name]
        except KeyError:
            raise KeyError(f"{self.dir}: no tensor named {name!r}") from None
        return self._handle(path).get_tensor(name)


class ShardedSafetensorsWriter:
    """Write tensors into ``model-XXXXX-of-YYYYY.safetensors`` shards and the index."""

    def __init__(self, out_dir: str | Path, shard_bytes: int = 2 * 1024**3):
        self.dir, self.shard_bytes = Path(out_dir), shard_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.shard_bytes:
            self._flush()
        self.pending[name] = tensor.detach().contiguous().cpu()
        self.pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        save_file(self.pending, self.dir / f"shard-{len(self.shards):05d}.tmp", metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending or not self.shards:
            self._flush()
        total = len(self.shards)
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = SINGLE if total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
            os.replace(self.dir / f"shard-{i:05d}.tmp", self.dir / final)
            weight_map.update({n: final for n in names})
        if total > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
