"""Batches of prompts with both views encoded, in a seeded order, resumable from a saved position.

    loader = PromptLoader.from_config(cfg)            # data.train_file, data.*, seed
    for batch in loader:                              # endless by default (num_epochs=None)
        batch.prompts[0].full.input_ids            # int64 (L_s,): prompt with the full image's pads
        batch.prompts[0].crop.pixel_values         # float32 (patches, C*T*P*P): the crop
        state = loader.state_dict()                   # {"epoch", "position", ...}: save with the checkpoint
    loader.load_state_dict(state)                     # the next batch is the one that followed the save

Order: epoch ``e`` visits the rows in ``permutation(seed, e)`` (``shuffle=False``: file order). A batch
holds ``batch_size`` prompts; with ``drop_last`` the remainder of an epoch is not yielded (it is
seen in other epochs, in another order). Prompts longer than ``max_prompt_length`` tokens (either
view) are skipped, logged once and listed in ``loader.skipped``. ``state_dict()`` taken after a
batch was yielded points just after that batch. One iteration at a time per loader.

Per prompt: the full view is the full image (red box drawn), the crop view the crop
(``views.load_views``); both go through the same ``QwenVLImageProcessor`` and the same prompt text
(``chat_template``), so their ``input_ids`` differ only in the number of ``<|image_pad|>`` tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from megatron_vopd.data.errors import DataError
from megatron_vopd.data.chat_template import IMAGE_PAD, expand_image_pads, tokenize_prompt
from megatron_vopd.data.image_processing import QwenVLImageProcessor
from megatron_vopd.data.schema import Record, read_records
from megatron_vopd.data.views import load_views

log = logging.getLogger(__name__)


@dataclass
class EncodedView:
    """One view of a prompt, ready for the model: token ids and the image's patches."""

    input_ids: np.ndarray  # (L,) int64, image pads expanded
    pixel_values: np.ndarray  # (grid_h * grid_w, C * T * P * P) float32
    image_grid_thw: np.ndarray  # (1, 3) int64


@dataclass
class EncodedPrompt:
    """A prompt with both views (same text, different image) and its label."""

    id: str
    answer: str  # the correct letter (for evaluation; training is label-free)
    options: tuple[str, ...]
    full: EncodedView  # full image with the red box
    crop: EncodedView  # crop around the evidence
    prompt_ids: np.ndarray | None = None  # (L,) int64, ONE image pad: what a rollout engine takes
    full_image: object = None  # PIL image of the full view (for the rollout engine)
    crop_image: object = None  # PIL image of the crop view


@dataclass
class PromptBatch:
    """A batch of prompts and the loader position right after it."""

    prompts: list[EncodedPrompt]
    epoch: int
    position: int  # rows of this epoch's order consumed after this batch

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def answers(self) -> list[str]:
        return [p.answer for p in self.prompts]

    def pixel_values(self, view: str = "full") -> np.ndarray:
        """All images of one view concatenated (the layout the vision tower takes)."""
        return np.concatenate([getattr(p, view).pixel_values for p in self.prompts], axis=0)

    def image_grid_thw(self, view: str = "full") -> np.ndarray:
        """(batch, 3) grids of one view, in prompt order."""
        return np.concatenate([getattr(p, view).image_grid_thw for p in self.prompts], axis=0)


def load_records(path: str | Path) -> tuple[list[Record], dict[str, str]]:
    """Records of a prepared parquet file, or of a raw jsonl (validated strictly, images header-checked)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        from megatron_vopd.data.validate import validate_line

        with open(path, encoding="utf-8-sig") as f:
            records = [validate_line(t, file=path, line=i, root=path.parent, check_images="header")
                       for i, t in enumerate(f, start=1) if t.strip()]
        return records, {"image_root": str(path.parent)}
    return read_records(path)


class PromptLoader:
    """Seeded, resumable batches of ``EncodedPrompt`` (see the module docstring)."""

    def __init__(self, records: Sequence[Record], *, tokenizer, family: str = "qwen2.5", batch_size: int = 1,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 image_processor: QwenVLImageProcessor | None = None, image_root: str | Path | None = None,
                 crop_margin: float = 0.5, min_crop_size: int = 224, max_prompt_length: int | None = None,
                 thinking: bool = False, num_epochs: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1 (data.prompts_per_step)")
        self.records = list(records)
        self.tokenizer, self.family, self.thinking = tokenizer, family, thinking
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.image_processor = image_processor or QwenVLImageProcessor.for_family(family)
        self.image_root = image_root
        self.crop_margin, self.min_crop_size = crop_margin, min_crop_size
        self.max_prompt_length, self.num_epochs = max_prompt_length, num_epochs
        self.pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.skipped: dict[str, int] = {}  # row id -> prompt length, for prompts over max_prompt_length
        self._epoch, self._position = 0, 0
        self.source: str | None = None  # the data file, named by errors (from_file sets it)

    @classmethod
    def from_file(cls, path: str | Path, *, image_root: str | Path | None = None, **kwargs) -> "PromptLoader":
        """A loader over a prepared parquet (or raw jsonl); images relative to ``image_root``, else the
        directory recorded by ``vopd data prepare``."""
        records, meta = load_records(path)
        loader = cls(records, image_root=image_root or meta.get("image_root") or Path(path).parent, **kwargs)
        loader.source = meta.get("source_file") or str(path)  # record.line is a line of the source jsonl
        return loader

    @classmethod
    def from_config(cls, cfg, path: str | Path | None = None, *, tokenizer=None, **kwargs) -> "PromptLoader":
        """The loader a ``VopdConfig`` describes: ``data.*`` for files, sizes and the tokenizer family, the
        model family's image preprocessing (``Architecture.image_processor``), ``seed`` for the order.
        ``path`` defaults to data.train_file."""
        from megatron_vopd.architecture import architecture
        from megatron_vopd.data.tokenizer import load_tokenizer

        d = cfg.data
        path = path or d.train_file
        if not path:
            raise ValueError("no data file: set data.train_file (a parquet written by `vopd data prepare`)")
        processor = architecture(cfg.model.arch).image_processor(cfg.model, min_pixels=d.min_pixels,
                                                                 max_pixels=d.max_pixels)
        options = dict(tokenizer=tokenizer or load_tokenizer(d.tokenizer), family=d.tokenizer,
                       batch_size=d.prompts_per_step, seed=cfg.seed, image_processor=processor,
                       crop_margin=d.crop_margin, min_crop_size=d.min_crop_size,
                       max_prompt_length=d.max_prompt_length)
        return cls.from_file(path, image_root=getattr(d, "image_root", None), **{**options, **kwargs})

    # ------------------------------------------------------------------ order and state

    def order(self, epoch: int) -> np.ndarray:
        """Row indices in the order of ``epoch``."""
        if not self.shuffle:
            return np.arange(len(self.records))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.records))

    def __len__(self) -> int:
        """Batches per epoch (before skipping over-long prompts)."""
        n = len(self.records)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict:
        """Where the loader is: the next batch starts at ``position`` of ``epoch``'s order."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed, "shuffle": self.shuffle,
                "num_rows": len(self.records), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume from a ``state_dict()``; refuses a state taken over other data or another order."""
        for key, mine in (("num_rows", len(self.records)), ("seed", self.seed), ("shuffle", self.shuffle)):
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has {mine!r}: "
                                 "the saved position refers to another dataset or order")
        if not 0 <= state["position"] <= len(self.records) or state["epoch"] < 0:
            raise ValueError(f"loader state out of range: {state}")
        self._epoch, self._position = int(state["epoch"]), int(state["position"])

    # ------------------------------------------------------------------ encoding

    def _view(self, ids: np.ndarray, image) -> EncodedView:
        pixel_values, grid = self.image_processor.process(image)
        tokens = grid[0] * grid[1] * grid[2] // self.image_processor.merge_size ** 2
        return EncodedView(expand_image_pads(ids, self.pad_id, [tokens]), pixel_values,
                           np.array([grid], dtype=np.int64))

    def encode(self, record: Record) -> EncodedPrompt:
        """Both views of one record (images opened, processed, prompt tokenised). A failure names the
        record (its source row) and the image: DataError."""
        try:
            full_image, crop_image = load_views(record.full_image, record.crop_image, record.bbox,
                                                root=self.image_root, margin=self.crop_margin,
                                                min_size=self.min_crop_size)
            ids = tokenize_prompt(record.prompt, self.tokenizer, self.family, thinking=self.thinking)
            full, crop = self._view(ids, full_image), self._view(ids, crop_image)
        except (DataError, ValueError, OSError) as e:
            reason = e.reason if isinstance(e, DataError) else "bad_image"
            raise DataError(f"{e.message if isinstance(e, DataError) else e} (image {record.full_image})",
                            file=self.source or record.source, line=record.line, key=getattr(e, "key", None),
                            reason=reason) from None
        return EncodedPrompt(record.id, record.answer, record.options, full, crop, np.asarray(ids, dtype=np.int64),
                             full_image, crop_image)

    def _too_long(self, prompt: EncodedPrompt) -> bool:
        if self.max_prompt_length is None:
            return False
        length = max(len(prompt.full.input_ids), len(prompt.crop.input_ids))
        if length <= self.max_prompt_length:
            return False
        if prompt.id not in self.skipped:
            log.warning("skipping prompt %s: %d tokens > data.max_prompt_length=%d", prompt.id, length,
                        self.max_prompt_length)
        self.skipped[prompt.id] = length
        return True

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[PromptBatch]:
        while self.num_epochs is None or self._epoch < self.num_epochs:
            order, batch, yielded = self.order(self._epoch), [], False
            position = self._position
            while position < len(order):
                prompt = self.encode(self.records[order[position]])
                position += 1
                if self._too_long(prompt):
                    continue
                batch.append(prompt)
                if len(batch) == self.batch_size:
                    self._position = position
                    yielded = True
                    yield PromptBatch(batch, self._epoch, position)
                    batch = []
            if batch and not self.drop_last:
                self._position = position
                yielded = True
                yield PromptBatch(batch, self._epoch, position)
            if not yielded and self._position == 0:
                raise ValueError(f"an epoch yields no batch: {len(self.records)} rows, {len(self.skipped)} too long, "
                                 f"batch_size={self.batch_size} (data.prompts_per_step) with drop_last")
            self._epoch, self._position = self._epoch + 1, 0
