"""Our 3-D position ids equal transformers' Qwen2.5-VL get_rope_index (text, images, padding)."""

import pytest
import torch
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

from megatron_vopd.models.mrope import mrope_position_ids

IMG, START, END = 151655, 151652, 151653


@pytest.fixture(scope="module")
def hf_model():
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32),
        image_token_id=IMG, vision_start_token_id=START, vision_end_token_id=END)
    return Qwen2_5_VLModel(cfg).eval()


def _sample(grids, texts, gen):
    parts = []
    for i, text_len in enumerate(texts):
        parts.append(torch.randint(0, 150000, (text_len,), generator=gen))
        if i < len(grids):
            t, h, w = grids[i]
            parts += [torch.tensor([START]), torch.full((t * h * w // 4,), IMG), torch.tensor([END])]
    return torch.cat(parts)


def _batch(samples, left_pad):
    seq = max(len(s) for s in samples)
    ids = torch.zeros(len(samples), seq, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(samples):
        sl = slice(seq - len(s), seq) if left_pad else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, 1
    return ids, mask


@pytest.mark.parametrize("left_pad", [True, False])
def test_matches_transformers(hf_model, left_pad):
    g = torch.Generator().manual_seed(0)
    per_sample = [[[1, 8, 8]], [[1, 12, 6], [1, 4, 10]], []]
    samples = [_sample(grids, [5] + [3] * len(grids), g) for grids in per_sample]
    ids, mask = _batch(samples, left_pad)
    grids = torch.tensor([g for s in per_sample for g in s])
    ours = mrope_position_ids(ids, grids, image_token_id=IMG, spatial_merge_size=2, attention_mask=mask)
    theirs, _ = hf_model.get_rope_index(ids, mm_token_type_ids=(ids == IMG).int(), image_grid_thw=grids,
                                        attention_mask=mask)
    valid = mask.bool()[None].expand(3, -1, -1)
    assert torch.equal(ours[valid], theirs[valid])
    assert ours.shape == (3, 3, ids.shape[1])


def test_text_only_is_arange_on_three_rows():
    ids = torch.randint(0, 1000, (2, 7))
    pos = mrope_position_ids(ids, None, image_token_id=IMG)
    assert torch.equal(pos, torch.arange(7).expand(3, 2, 7))


def test_image_run_of_wrong_length_is_an_error():
    ids = torch.cat([torch.tensor([1, START]), torch.full((15,), IMG), torch.tensor([END])])[None]
    with pytest.raises(ValueError, match="15 tokens.*needs 16"):
        mrope_position_ids(ids, torch.tensor([[1, 8, 8]]), image_token_id=IMG)


def test_more_grids_than_images_is_an_error():
    ids = torch.cat([torch.tensor([1, START]), torch.full((16,), IMG), torch.tensor([END])])[None]
    with pytest.raises(ValueError, match="more entries"):
        mrope_position_ids(ids, torch.tensor([[1, 8, 8], [1, 8, 8]]), image_token_id=IMG)
