"""megatron_vopd.data.loader: batches with both views encoded; seeded order; resumable; views."""

import dataclasses

import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessorPil

from megatron_vopd.config import load_config
from megatron_vopd.data.chat_template import encode_prompt
from megatron_vopd.data.image_processing import QwenVLImageProcessor
from megatron_vopd.data.loader import PromptLoader
from megatron_vopd.data.schema import read_records
from megatron_vopd.data.tokenizer import SPECIAL_TOKEN_IDS
from megatron_vopd.data.views import RED, crop_box, crop_view
from tests.data_fixtures import SYNTH_N, prepared, qwen25_tokenizer, qwen35_tokenizer, synth_dir  # noqa: F401

PAD = SPECIAL_TOKEN_IDS["qwen2.5"]["<|image_pad|>"]


def loader(prepared, tokenizer, **kwargs):
    options = dict(tokenizer=tokenizer, batch_size=4, seed=5, min_crop_size=56)
    return PromptLoader.from_file(prepared, **{**options, **kwargs})


def ids(batch):
    return [p.id for p in batch.prompts]


def test_batch_holds_both_views_equal_to_transformers(prepared, synth_dir, qwen25_tokenizer):
    batch = next(iter(loader(prepared, qwen25_tokenizer)))
    assert len(batch) == 4 and batch.epoch == 0 and batch.position == 4
    records = {r.id: r for r in read_records(prepared)[0]}
    hf = Qwen2VLImageProcessorPil()
    for prompt in batch.prompts:
        record = records[prompt.id]
        assert prompt.answer == record.answer and prompt.options == record.options
        for view, path in (("full", record.full_image), ("crop", record.crop_image)):
            encoded = getattr(prompt, view)
            expected = hf([Image.open(synth_dir / path)], return_tensors="np")
            np.testing.assert_array_equal(encoded.pixel_values, expected["pixel_values"])
            np.testing.assert_array_equal(encoded.image_grid_thw, expected["image_grid_thw"])
            n_pads = int(expected["image_grid_thw"].prod()) // 4
            assert (encoded.input_ids == PAD).sum() == n_pads
            np.testing.assert_array_equal(encoded.input_ids,
                                          encode_prompt(record.prompt, qwen25_tokenizer, "qwen2.5", [n_pads]))
        # same text, different image: the ids differ only in the number of image pads
        s, t = prompt.full.input_ids, prompt.crop.input_ids
        assert len(s) > len(t)
        np.testing.assert_array_equal(s[s != PAD], t[t != PAD])
    assert batch.pixel_values("crop").shape[0] == batch.image_grid_thw("crop").prod(axis=1).sum()


def test_order_is_seeded_and_covers_every_row_each_epoch(prepared, qwen25_tokenizer):
    a = loader(prepared, qwen25_tokenizer, num_epochs=2)
    batches = list(a)
    assert len(batches) == 2 * SYNTH_N // 4 == 2 * len(a)
    epoch0 = [i for b in batches if b.epoch == 0 for i in ids(b)]
    epoch1 = [i for b in batches if b.epoch == 1 for i in ids(b)]
    assert sorted(epoch0) == sorted(epoch1) and len(set(epoch0)) == SYNTH_N and epoch0 != epoch1
    same = [i for b in loader(prepared, qwen25_tokenizer, num_epochs=1) for i in ids(b)]
    other = [i for b in loader(prepared, qwen25_tokenizer, num_epochs=1, seed=6) for i in ids(b)]
    assert same == epoch0 and other != epoch0
    plain = [i for b in loader(prepared, qwen25_tokenizer, num_epochs=1, shuffle=False) for i in ids(b)]
    assert plain == [r.id for r in read_records(prepared)[0]]


def test_resume_from_saved_position(prepared, qwen25_tokenizer):
    full = loader(prepared, qwen25_tokenizer)
    it = iter(full)
    expected, state = [], None
    for step in range(9):  # crosses the epoch boundary (6 batches per epoch)
        batch = next(it)
        expected.append(batch)
        if step == 3:
            state = full.state_dict()
    assert state["epoch"] == 0 and state["position"] == 16
    resumed = loader(prepared, qwen25_tokenizer)
    resumed.load_state_dict(state)
    again = [b for _, b in zip(range(5), resumed)]
    for a, b in zip(expected[4:], again):
        assert ids(a) == ids(b) and (a.epoch, a.position) == (b.epoch, b.position)
        for pa, pb in zip(a.prompts, b.prompts):
            np.testing.assert_array_equal(pa.full.input_ids, pb.full.input_ids)
            np.testing.assert_array_equal(pa.crop.pixel_values, pb.crop.pixel_values)
    with pytest.raises(ValueError, match="num_rows"):
        resumed.load_state_dict({**state, "num_rows": 7})


def test_long_prompts_are_skipped_and_listed(prepared, qwen25_tokenizer, caplog):
    records, meta = read_records(prepared)
    longer = [dataclasses.replace(r, prompt=r.prompt.replace("?", "? Look closely." * 40)) if i % 3 == 0 else r
              for i, r in enumerate(records)]
    limit = 200  # the plain prompts have 138 tokens, the longer ones over 200
    short = PromptLoader(longer, tokenizer=qwen25_tokenizer, batch_size=4, num_epochs=1, drop_last=False,
                         image_root=meta["image_root"], min_crop_size=56, max_prompt_length=limit)
    kept = [p for b in short for p in b.prompts]
    assert all(len(p.full.input_ids) <= limit for p in kept)
    assert sorted(short.skipped) == sorted(r.id for i, r in enumerate(records) if i % 3 == 0)
    assert len(kept) + len(short.skipped) == SYNTH_N
    assert "data.max_prompt_length" in caplog.text
    with pytest.raises(ValueError, match="no batch"):
        next(iter(loader(prepared, qwen25_tokenizer, max_prompt_length=10)))


def test_computed_crop_when_no_shipped_crop(prepared, qwen25_tokenizer):
    records, meta = read_records(prepared)
    no_crop = [r.__class__(**{**r.__dict__, "crop_image": None}) for r in records[:4]]
    batch = next(iter(PromptLoader(no_crop, tokenizer=qwen25_tokenizer, batch_size=4, shuffle=False,
                                   image_root=meta["image_root"], crop_margin=0.5, min_crop_size=56)))
    for prompt, record in zip(batch.prompts, no_crop):
        student = Image.open(f"{meta['image_root']}/{record.full_image}")
        crop = crop_view(student, record.bbox, margin=0.5, min_size=56)
        np.testing.assert_array_equal(prompt.crop.pixel_values, QwenVLImageProcessor()([crop])["pixel_values"])


def test_from_config(prepared, qwen25_tokenizer):
    cfg = load_config(None, [f"data.train_file={prepared}", "data.prompts_per_step=3", "data.min_crop_size=56",
                             "data.max_pixels=12544", "seed=11"])
    a = PromptLoader.from_config(cfg, tokenizer=qwen25_tokenizer)
    assert (a.batch_size, a.seed, a.min_crop_size, a.image_processor.max_pixels) == (3, 11, 56, 12544)
    batch = next(iter(a))
    assert len(batch) == 3 and batch.prompts[0].full.image_grid_thw.tolist() == [[1, 8, 8]]  # 112x112 max


def test_qwen35_prompts(prepared, qwen35_tokenizer):
    processor = QwenVLImageProcessor.for_family("qwen3.5")
    batch = next(iter(loader(prepared, qwen35_tokenizer, family="qwen3.5", image_processor=processor)))
    prompt = batch.prompts[0]
    assert prompt.full.pixel_values.shape[1] == 3 * 2 * 16 * 16
    pad = SPECIAL_TOKEN_IDS["qwen3.5"]["<|image_pad|>"]
    assert (prompt.full.input_ids == pad).sum() == prompt.full.image_grid_thw.prod() // 4
    assert qwen35_tokenizer.decode(prompt.full.input_ids[-6:]) == "assistant\n<think>\n\n</think>\n\n"


def test_crop_box_geometry():
    for bbox, size in [((100, 100, 140, 120), (448, 448)), ((0, 0, 30, 20), (448, 300)),
                       ((400, 280, 448, 300), (448, 300)), ((5, 5, 50, 40), (60, 50)), ((10, 10, 400, 30), (448, 448))]:
        x1, y1, x2, y2 = crop_box(bbox, size, margin=0.5, min_size=112)
        assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]  # clamped to the image
        assert x1 <= bbox[0] - min(4, bbox[0]) and y1 <= bbox[1] - min(4, bbox[1])  # box + its red border kept
        assert x2 >= min(size[0], bbox[2] + 4) and y2 >= min(size[1], bbox[3] + 4)
        assert x2 - x1 >= min(112, size[0]) and y2 - y1 >= min(112, size[1])  # minimum size
    assert crop_box((100, 100, 140, 120), (448, 448), margin=0.5, min_size=0) == (80, 90, 160, 130)  # margin x side


def test_crop_view_keeps_the_red_border(synth_dir):
    from tests.data_fixtures import raw_rows

    row = raw_rows(synth_dir)[0]
    crop = np.asarray(crop_view(Image.open(synth_dir / row["images"][0]).convert("RGB"), row["bbox"],
                                margin=0.0, min_size=0))
    red = (crop == RED).all(axis=-1)
    assert red[1:-1].any(axis=1).all() and red[:, 1:-1].any(axis=0).all()  # the whole red rectangle is inside
    assert not red[0].any() and not red[:, 0].any()  # with a pixel of context around it


def test_raw_jsonl_can_be_loaded_directly(synth_dir, prepared, qwen25_tokenizer):
    from_jsonl = loader(synth_dir / "train.jsonl", qwen25_tokenizer, shuffle=False)
    from_parquet = loader(prepared, qwen25_tokenizer, shuffle=False)
    assert from_jsonl.records == from_parquet.records
    a, b = next(iter(from_jsonl)), next(iter(from_parquet))
    np.testing.assert_array_equal(a.prompts[0].crop.input_ids, b.prompts[0].crop.input_ids)


def test_an_image_that_breaks_after_prepare_names_the_row(tmp_path):
    """An image deleted (or corrupted) after prepare: the loader's error names the source row and the image."""
    import pytest

    from megatron_vopd.data.errors import DataError
    from megatron_vopd.data.loader import PromptLoader
    from megatron_vopd.data.prepare import prepare
    from megatron_vopd.data.synth import synthesize
    from megatron_vopd.data.tokenizer import load_tokenizer

    raw = tmp_path / "raw"
    synthesize(raw, 2, seed=0, size=96)
    prepare(raw, tmp_path / "t.parquet", progress_every=0)
    loader = PromptLoader.from_file(tmp_path / "t.parquet", tokenizer=load_tokenizer("qwen2.5"), shuffle=False,
                                    min_crop_size=32)
    (raw / loader.records[1].full_image).write_bytes(b"not a png any more")
    loader.encode(loader.records[0])
    with pytest.raises(DataError) as info:
        loader.encode(loader.records[1])
    assert str(info.value).startswith(f"{raw / 'train.jsonl'}:2: ") and loader.records[1].full_image in str(info.value)
