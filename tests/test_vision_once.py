"""One vision pass per prompt: a micro-batch carries each prompt view's patches once and the model repeats the
features per sample; logits equal, bit for bit, those of encoding every sample's image (also with deepstack rows
crossing a pipeline stage)."""

import numpy as np
import pytest
import torch

from megatron_vopd.data.loader import EncodedView
from megatron_vopd.models.stage import expand_images
from megatron_vopd.train.sequences import Response, micro_batches, view_sequences
from tests.mp import WORKERS, torchrun


class _Prompt:
    def __init__(self, full):
        self.full = full


def test_collate_keeps_each_prompts_patches_once():
    rng = np.random.default_rng(0)
    grids = [[1, 4, 4], [1, 2, 4], [1, 4, 2]]
    prompts = [_Prompt(EncodedView(np.arange(5), rng.standard_normal((g[1] * g[2], 6)).astype(np.float32),
                                   np.asarray([g]))) for g in grids]
    # prompt 1 has one sample, prompts 0 and 2 three; responses in prompt order, as the trainer makes them
    order = [0, 0, 0, 1, 2, 2, 2]
    resps = [Response(p, np.arange(2 + i), np.zeros(2 + i, np.float32), False) for i, p in enumerate(order)]
    mb = micro_batches({"full": view_sequences(prompts, resps, "full")}, budget=10**6, pad_id=0,
                       position_ids=lambda ids, grid, mask: torch.zeros(3, *ids.shape, dtype=torch.long))["full"][0]
    assert mb["image_source"].tolist() == [0, 0, 0, 1, 2, 2, 2]
    assert mb["vision_grid_thw"].tolist() == grids and mb["image_grid_thw"].tolist() == [grids[p] for p in order]
    assert len(mb["pixel_values"]) == 16 + 8 + 8  # each prompt's patches once (was 3 x 16 + 8 + 3 x 8)
    repeated = expand_images(mb["pixel_values"], mb["vision_grid_thw"], mb["image_source"], 1)
    assert torch.equal(repeated, torch.from_numpy(np.concatenate([prompts[p].full.pixel_values for p in order])))


def test_a_split_group_encodes_each_part_once():
    """Micro-batches are grouped by tokens: a prompt whose samples straddle two groups is encoded in each."""
    prompts = [_Prompt(EncodedView(np.arange(4), np.ones((4, 6), np.float32), np.asarray([[1, 2, 2]])))]
    resps = [Response(0, np.arange(4), np.zeros(4, np.float32), False) for _ in range(3)]
    mbs = micro_batches({"full": view_sequences(prompts, resps, "full")}, budget=16, pad_id=0,
                        position_ids=lambda ids, grid, mask: torch.zeros(3, *ids.shape, dtype=torch.long))["full"]
    assert [mb["image_source"].tolist() for mb in mbs] == [[0, 0], [0]]
    assert [len(mb["pixel_values"]) for mb in mbs] == [4, 4]


@pytest.mark.slow
def test_logits_equal_per_sample_encoding_at_pp2():
    """Tiny Qwen2.5-VL and Qwen3-VL (deepstack: the repeated deepstack rows reach layer 2 on stage 2) at PP2:
    logits identical; the vision tower's gradients equal up to the summation order (measured 3e-8)."""
    code, r, out = torchrun(str(WORKERS / "vision_once.py"), 2, "2")
    assert code == 0 and r is not None, out[-4000:]
    for family in ("qwen2.5-vl", "qwen3-vl"):
        f = r[family]
        assert f["logits_equal"] and f["logits_abs_max"] > 0.5 and f["patches"] == [96, 288], f
        assert f["vision_grad_max_abs_diff"] <= 1e-6 and f["vision_grad_abs_max"] > 0.01, f
