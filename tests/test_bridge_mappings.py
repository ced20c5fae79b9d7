"""Mapping kinds (format and TP distribution) and the Qwen2.5-VL table, without processes."""

import pytest
import torch

from megatron_vopd.bridge import MappingTable
from megatron_vopd.bridge.hf_config import HFConfigError, read_hf_config
from megatron_vopd.bridge.hf_io import HFCheckpoint, ShardedSafetensorsWriter
from megatron_vopd.bridge.mappings import QKV, GatedMLP, RowParallel
from megatron_vopd.architecture import UnknownArchitecture, architecture
from megatron_vopd.config import load_model_config
from tests.hf_models import save_tiny_qwen25_vl


@pytest.fixture(scope="module")
def cfg():
    return load_model_config("tiny-qwen2.5-vl")


def test_qkv_groups_queries_with_their_kv_head(cfg):
    # 4 q heads, 2 kv groups, head dim 32: rows of head i hold the value i.
    head = lambda ids: torch.cat([torch.full((32, 3), float(i)) for i in ids])  # noqa: E731
    m = QKV("qkv", ("q", "k", "v"))
    fused = m.to_megatron({"q": head([0, 1, 2, 3]), "k": head([10, 11]), "v": head([20, 21])}, cfg)
    assert fused[::32, 0].tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    assert m.shard(fused, 1, 2)[::32, 0].tolist() == [2, 3, 11, 21]  # TP rank 1 gets the second group whole
    back = m.to_hf(fused, cfg)
    assert torch.equal(back["q"], head([0, 1, 2, 3])) and torch.equal(back["v"], head([20, 21]))


def test_qkv_bias_roundtrip(cfg):
    m = QKV("b", ("q", "k", "v"))
    q, k, v = torch.randn(128), torch.randn(64), torch.randn(64)
    back = m.to_hf(m.to_megatron({"q": q, "k": k, "v": v}, cfg), cfg)
    assert torch.equal(back["q"], q) and torch.equal(back["k"], k) and torch.equal(back["v"], v)


def test_gated_mlp_shards_each_half():
    m = GatedMLP("fc1", ("gate", "up"))
    gate, up = torch.arange(8.0)[:, None], 100 + torch.arange(8.0)[:, None]
    full = m.to_megatron({"gate": gate, "up": up}, None)
    shards = [m.shard(full, r, 2) for r in range(2)]
    assert shards[1][:, 0].tolist() == [4, 5, 6, 7, 104, 105, 106, 107]
    assert torch.equal(m.unshard(shards), full)


def test_row_parallel_splits_inputs():
    m = RowParallel("proj", "o")
    full = torch.arange(12.0).reshape(2, 6)
    assert m.shard(full, 1, 3).tolist() == [[2, 3], [8, 9]]
    assert m.full_shape(torch.Size([2, 2]), 3) == (2, 6)


@pytest.mark.parametrize("tied", [False, True])
def test_table_covers_every_tensor_of_a_transformers_checkpoint(tmp_path, tied):
    hf = save_tiny_qwen25_vl(tmp_path / "hf", tied=tied)
    cfg = read_hf_config(hf)
    assert cfg.tie_word_embeddings == tied and cfg.num_query_groups == 2 and cfg.rms_norm_eps == 1e-6
    assert MappingTable.for_config(cfg).hf_names() == HFCheckpoint(hf).names()


def test_unknown_architecture_is_named(tmp_path, cfg):
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(UnknownArchitecture, match="LlamaForCausalLM.*known: Qwen2_5_VLForConditionalGeneration"):
        read_hf_config(tmp_path)
    with pytest.raises(UnknownArchitecture, match="'llama'"):
        architecture("llama")


def test_missing_config_is_named(tmp_path):
    with pytest.raises(HFConfigError, match="no config.json"):
        read_hf_config(tmp_path)


def test_sharded_writer_roundtrip(tmp_path):
    tensors = {f"t{i}": torch.randn(100, 10) for i in range(5)}
    w = ShardedSafetensorsWriter(tmp_path, shard_bytes=8000)
    for k, v in tensors.items():
        w.add(k, v)
    w.close()
    ck = HFCheckpoint(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("model-*"))) == 3  # 2 tensors of 4000 B a shard
    assert all(torch.equal(ck.get(k), v) for k, v in tensors.items())


def test_tp_not_dividing_vocab_or_heads_is_named(cfg):
    from megatron_vopd.models.conversion import check_layout
    from megatron_vopd.config import ConfigError

    odd = load_model_config("tiny-qwen2.5-vl")
    odd.vocab_size = 151937
    with pytest.raises(ConfigError, match=r"--tp 2 does not divide model.vocab_size=151937"):
        check_layout(odd, 2, 1)
    with pytest.raises(ConfigError, match="model.num_attention_heads"):
        check_layout(cfg, 3, 1)
    check_layout(cfg, 2, 2)
