"""Reading and writing Hugging Face safetensors checkpoints, one tensor at a time, in bounded memory.

``HFCheckpoint`` opens a folder (one ``model.safetensors`` or shards with an index) and reads one
tensor by name with plain file reads into a fresh buffer (no memory map, so a conversion's resident
memory does not grow with the file). ``ShardedSafetensorsWriter`` writes each tensor straight into
the current shard file as it arrives (space for the header is reserved at the front, and the
header, padded with spaces as the format allows, is written when the shard closes), so it holds
no more than the tensor it is given.

The safetensors layout: 8-byte little-endian header length, a JSON header
``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``, then the raw bytes.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_header(path: Path) -> tuple[dict, int]:
    """(header without metadata, byte offset where the data starts)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    return header, 8 + size


class HFCheckpoint:
    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index, single = self.dir / INDEX, self.dir / SINGLE
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif single.is_file():
            files = [SINGLE]
        else:
            raise FileNotFoundError(f"{self.dir}: neither {INDEX} nor {SINGLE} found")
        self.entries: dict[str, tuple[Path, dict, int]] = {}
        for name in files:
            path = self.dir / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {index} but missing")
            header, start = read_header(path)
            self.entries.update({k: (path, v, start) for k, v in header.items()})

    def names(self) -> set[str]:
        return set(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)[1]["shape"])

    def _entry(self, name: str):
        try:
            return self.entries[name]
        except KeyError:
            raise KeyError(f"{self.dir}: no tensor named {name!r}") from None

    def get(self, name: str) -> torch.Tensor:
        path, meta, start = self._entry(name)
        begin, end = meta["data_offsets"]
        out = torch.empty(meta["shape"], dtype=_DTYPES[meta["dtype"]])
        view = memoryview(out.view(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(bytearray())
        with open(path, "rb") as f:
            f.seek(start + begin)
            if f.readinto(view) != end - begin:
                raise ValueError(f"{path}: tensor {name} is truncated")
        return out


class ShardedSafetensorsWriter:
    """Write tensors into ``model-XXXXX-of-YYYYY.safetensors`` shards (or one ``model.safetensors``) + index."""

    def __init__(self, out_dir: str | Path, shard_bytes: int = 2 * 1024**3, header_reserve: int = 1 << 20):
        self.dir, self.shard_bytes, self.reserve = Path(out_dir), shard_bytes, header_reserve
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[list[str]] = []
        self.total_bytes = 0
        self._file = None

    def _open_shard(self) -> None:
        self._file = open(self.dir / f"shard-{len(self.shards):05d}.tmp", "wb")
        self._file.write(b"\0" * (8 + self.reserve))
        self._header: dict = {"__metadata__": {"format": "pt"}}
        self._offset = 0
        self.shards.append([])

    def add(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().contiguous().cpu()
        nbytes = tensor.numel() * tensor.element_size()
        if self._file is None or (self._offset and self._offset + nbytes > self.shard_bytes):
            self._close_shard()
            self._open_shard()
        if nbytes:
            self._file.write(memoryview(tensor.view(-1).view(torch.uint8).numpy()))
        self._header[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                              "data_offsets": [self._offset, self._offset + nbytes]}
        self._offset += nbytes
        self.total_bytes += nbytes
        self.shards[-1].append(name)

    def _close_shard(self) -> None:
        if self._file is None:
            return
        header = json.dumps(self._header, separators=(",", ":")).encode()
        if len(header) > self.reserve:
            raise ValueError(f"safetensors header of {len(header)} bytes exceeds the {self.reserve} reserved")
        self._file.seek(0)
        self._file.write(struct.pack("<Q", self.reserve) + header + b" " * (self.reserve - len(header)))
        self._file.close()
        self._file = None

    def close(self) -> None:
        if self._file is None and not self.shards:
            self._open_shard()
        self._close_shard()
        total = len(self.shards)
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = SINGLE if total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
            os.replace(self.dir / f"shard-{i:05d}.tmp", self.dir / final)
            weight_map.update({n: final for n in names})
        if total > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
