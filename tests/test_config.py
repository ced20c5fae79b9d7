"""megatron_vopd.config: recipes load, overrides convert, and bad configurations name their keys."""

from pathlib import Path

import pytest
import yaml

from megatron_vopd.config import (
    CONFIGS_DIR,
    ConfigError,
    ModelConfig,
    VopdConfig,
    apply_overrides,
    dump_yaml,
    from_dict,
    load_config,
    load_model_config,
    to_dict,
    validate,
)

MODEL_RECIPES = sorted((CONFIGS_DIR / "model").glob("*.yaml"))
RUN_RECIPES = sorted(p for p in CONFIGS_DIR.rglob("*.yaml") if p.parent != CONFIGS_DIR / "model")
TINY = ["model=tiny-qwen2.5-vl"]


def write_yaml(tmp_path: Path, data: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- every recipe loads


def test_recipes_exist():
    names = {p.stem for p in MODEL_RECIPES}
    assert {"tiny-qwen2.5-vl", "qwen2.5-vl-3b", "qwen2.5-vl-7b"} <= names
    assert CONFIGS_DIR / "demo.yaml" in RUN_RECIPES


@pytest.mark.parametrize("path", RUN_RECIPES, ids=lambda p: str(p.relative_to(CONFIGS_DIR)))
def test_run_recipe_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, VopdConfig)
    yaml.safe_load(dump_yaml(cfg))  # the resolved config prints as valid YAML


@pytest.mark.parametrize("path", MODEL_RECIPES, ids=lambda p: p.stem)
def test_model_recipe_loads_through_wrapper(tmp_path, path):
    cfg = load_config(write_yaml(tmp_path, {"model": str(path)}))
    assert cfg.model == load_model_config(path.stem)
    assert cfg.model.vision.out_hidden_size == cfg.model.hidden_size


def test_tiny_recipe_is_the_real_architecture_small():
    m = load_model_config("tiny-qwen2.5-vl")
    assert (m.vocab_size, m.image_token_id, m.video_token_id) == (151936, 151655, 151656)
    assert (m.vision_start_token_id, m.vision_end_token_id) == (151652, 151653)
    assert (m.hidden_size, m.num_attention_heads, m.num_query_groups, m.head_dim) == (128, 4, 2, 32)
    assert m.mrope_section == [4, 6, 6] and m.num_layers == 4 and not m.tie_word_embeddings
    assert m.vision.fullatt_block_indexes == [1, 3] and m.params_dtype == "float32"


def test_real_recipes_match_hf_config():
    m3, m7 = load_model_config("qwen2.5-vl-3b"), load_model_config("qwen2.5-vl-7b")
    assert (m3.num_layers, m3.hidden_size, m3.ffn_hidden_size, m3.num_attention_heads, m3.num_query_groups) == (
        36, 2048, 11008, 16, 2)
    assert m3.tie_word_embeddings and m3.vocab_size == 151936
    assert (m7.num_layers, m7.hidden_size, m7.ffn_hidden_size, m7.num_attention_heads, m7.num_query_groups) == (
        28, 3584, 18944, 28, 4)
    assert not m7.tie_word_embeddings and m7.vocab_size == 152064
    for m in (m3, m7):
        assert m.mrope_section == [16, 24, 24] and m.head_dim == 128 and m.params_dtype == "bfloat16"
        assert (m.vision.depth, m.vision.hidden_size, m.vision.num_heads) == (32, 1280, 16)
        assert m.vision.fullatt_block_indexes == [7, 15, 23, 31]


def test_defaults_are_the_reference_settings():
    cfg = load_config(None)
    assert (cfg.rollout.n_samples, cfg.rollout.temperature, cfg.data.prompts_per_step) == (8, 1.0, 96)
    assert (cfg.distill.alpha, cfg.distill.top_k, cfg.distill.teacher, cfg.distill.ema_rate) == (0.5, 100, "ema", 0.05)
    assert (cfg.optimizer.lr, cfg.optimizer.betas, cfg.optimizer.warmup_steps) == (2e-6, (0.9, 0.999), 10)
    assert cfg.optimizer.micro_batch_tokens == 9216


# --------------------------------------------------------------------------- recipes and overrides


def test_model_recipe_with_inline_overrides(tmp_path):
    path = write_yaml(tmp_path, {"model": {"recipe": "qwen2.5-vl-7b", "params_dtype": "float32",
                                           "vision": {"depth": 16, "fullatt_block_indexes": [7, 15]}}})
    cfg = load_config(path)
    assert cfg.model.hidden_size == 3584 and cfg.model.params_dtype == "float32"
    assert cfg.model.vision.depth == 16 and cfg.model.vision.hidden_size == 1280


def test_overrides_of_every_kind():
    cfg = load_config(CONFIGS_DIR / "demo.yaml", [
        "parallel.tensor_model_parallel_size=2",  # int
        "optimizer.lr=1e-3",  # float written without a dot (PyYAML reads it as a string)
        "optimizer.clip_grad=2",  # int accepted for float
        "parallel.sequence_parallel=true",  # bool
        "distill.top_k=null",  # Optional -> None
        "data.train_file=/data/x.parquet",  # str
        "model.mrope_section=[4, 4, 8]",  # list[int]
        "optimizer.betas=[0.8, 0.95]",  # tuple[float, float]
        "model.vision.depth=2",  # nested dataclass field
        "model.vision={fullatt_block_indexes: [1]}",  # nested mapping merges
        "distill.teacher=fixed",  # Literal
    ])
    assert cfg.parallel.tensor_model_parallel_size == 2 and cfg.parallel.sequence_parallel is True
    assert cfg.optimizer.lr == 1e-3 and isinstance(cfg.optimizer.clip_grad, float)
    assert cfg.distill.top_k is None and cfg.data.train_file == "/data/x.parquet"
    assert cfg.model.mrope_section == [4, 4, 8] and cfg.optimizer.betas == (0.8, 0.95)
    assert cfg.model.vision.depth == 2 and cfg.model.vision.fullatt_block_indexes == [1]
    assert cfg.model.vision.hidden_size == 64 and cfg.distill.teacher == "fixed"


def test_model_override_replaces_section():
    cfg = load_config(None, ["model=qwen2.5-vl-3b", "model.recompute=true"])
    assert cfg.model.num_layers == 36 and cfg.model.recompute
    cfg = apply_overrides(cfg, ["model={recipe: tiny-qwen2.5-vl, num_layers: 2}"])
    assert cfg.model.num_layers == 2 and cfg.model.hidden_size == 128


def test_to_dict_round_trip():
    cfg = load_config(CONFIGS_DIR / "demo.yaml")
    again = from_dict(to_dict(cfg))
    assert again == cfg


# --------------------------------------------------------------------------- errors name the key


def test_unknown_key_in_yaml(tmp_path):
    path = write_yaml(tmp_path, {"model": "tiny-qwen2.5-vl", "optimizer": {"learning_rate": 1.0}})
    pattern = r"unknown key 'optimizer\.learning_rate'.*valid keys of 'optimizer'.*\blr\b"
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_unknown_nested_key_in_model_recipe(tmp_path):
    recipe = write_yaml(tmp_path, {**yaml.safe_load((CONFIGS_DIR / "model/tiny-qwen2.5-vl.yaml").read_text()),
                                   "vision": {"dept": 4}}, "bad-model.yaml")
    with pytest.raises(ConfigError, match=r"bad-model\.yaml: unknown key 'model\.vision\.dept'.*depth"):
        load_config(write_yaml(tmp_path, {"model": str(recipe)}))


def test_unknown_override_key():
    with pytest.raises(ConfigError, match=r"unknown key 'distill\.topk'.*top_k"):
        load_config(None, TINY + ["distill.topk=5"])
    with pytest.raises(ConfigError, match=r"unknown key 'nonsense'.*valid keys at the top level"):
        load_config(None, ["nonsense=1"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match=r"override 'distill\.top_k' is not of the form key\.sub=value"):
        load_config(None, ["distill.top_k"])


@pytest.mark.parametrize("override, pattern", [
    ("model.num_layers=abc", r"model\.num_layers: expected int, got 'abc'"),
    ("model.num_layers=2.5", r"model\.num_layers: expected int, got 2\.5"),
    ("model.recompute=1", r"model\.recompute: expected bool, got 1"),
    ("optimizer.lr=fast", r"optimizer\.lr: expected float, got 'fast'"),
    ("model.mrope_section=[4, x, 6]", r"model\.mrope_section\[1\]: expected int, got 'x'"),
    ("optimizer.betas=[0.9]", r"optimizer\.betas: expected 2 values"),
    ("model.vision=3", r"model\.vision: expected a mapping, got 3"),
])
def test_wrong_type(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_wrong_type_in_yaml_names_file(tmp_path):
    path = write_yaml(tmp_path, {"rollout": {"n_samples": "eight"}})
    with pytest.raises(ConfigError, match=r"recipe\.yaml: rollout\.n_samples: expected int, got 'eight'"):
        load_config(path)


def test_bad_choice():
    with pytest.raises(ConfigError, match=r"distill\.teacher: 'teacher' is not one of 'ema', 'current', 'fixed'"):
        load_config(None, ["distill.teacher=teacher"])
    with pytest.raises(ConfigError, match=r"model\.fp8: 'e5m2' is not one of 'e4m3', 'hybrid'"):
        load_config(None, ["model.fp8=e5m2"])


def test_unknown_model_recipe(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model recipe 'qwen9'.*tiny-qwen2\.5-vl"):
        load_config(write_yaml(tmp_path, {"model": "qwen9"}))


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML"):
        load_config(path)


# --------------------------------------------------------------------------- impossible combinations


def test_heads_not_divisible_by_tp():
    pattern = r"parallel\.tensor_model_parallel_size=3 must divide model\.num_attention_heads"
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, TINY + ["parallel.tensor_model_parallel_size=3"])


def test_query_groups_not_divisible_by_tp():
    # 4 heads, 2 kv heads: TP=4 divides the heads but not the kv heads.
    pattern = r"parallel\.tensor_model_parallel_size=4 must divide model\.num_query_groups"
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, TINY + ["parallel.tensor_model_parallel_size=4"])
    with pytest.raises(ConfigError, match=r"model\.num_query_groups=3 must divide model\.num_attention_heads"):
        load_config(None, TINY + ["model.num_query_groups=3"])


def test_layers_not_divisible_by_pp():
    with pytest.raises(ConfigError, match=r"parallel\.pipeline_model_parallel_size=3 must divide model\.num_layers"):
        load_config(None, TINY + ["parallel.pipeline_model_parallel_size=3"])


def test_fp8_without_transformer_engine():
    cfg = load_config(None, TINY)
    cfg.model.fp8, cfg.model.params_dtype, cfg.rollout.dtype = "e4m3", "bfloat16", "bfloat16"
    with pytest.raises(ConfigError, match=r"model\.fp8.*Transformer Engine"):
        validate(cfg, te_available=False)
    validate(cfg, te_available=True)  # fine where TE exists


@pytest.mark.parametrize("key, value", [("model.params_dtype", "float32"), ("rollout.dtype", "float16")])
def test_fp8_trains_bf16_parameters_and_syncs_bf16_to_the_engine(key, value):
    with pytest.raises(ConfigError, match=rf"model\.fp8='hybrid'.*set {key}=bfloat16 \(got '{value}'\)"):
        load_config(None, TINY + ["model.fp8=hybrid", "model.params_dtype=bfloat16", "rollout.dtype=bfloat16",
                                  f"{key}={value}"])


def test_transformer_engine_impl_without_transformer_engine():
    cfg = load_config(None, TINY)
    cfg.model.transformer_impl = "transformer_engine"
    with pytest.raises(ConfigError, match=r"model\.transformer_impl.*Transformer Engine"):
        validate(cfg, te_available=False)


def test_world_size_not_divisible():
    cfg = load_config(None, TINY + ["parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"])
    validate(cfg, world_size=8)
    assert cfg.parallel.data_parallel_size(8) == 2
    with pytest.raises(ConfigError, match=r"world size 6 is not divisible by parallel\.tensor_model_parallel_size"):
        validate(cfg, world_size=6)
    with pytest.raises(ConfigError, match=r"world size 6"):
        cfg.parallel.data_parallel_size(6)


@pytest.mark.parametrize("override, pattern", [
    ("parallel.sequence_parallel=true", r"parallel\.sequence_parallel.*tensor_model_parallel_size > 1"),
    ("rollout.temperature=0", r"rollout\.temperature=0\.0 must be > 0"),
    ("distill.alpha=1.5", r"distill\.alpha=1\.5 must be in \[0, 1\]"),
    ("distill.top_k=0", r"distill\.top_k=0 must be in \[1"),
    ("model.mrope_section=[16, 24, 24]", r"model\.mrope_section.*head_dim"),
    ("model.vision.out_hidden_size=64", r"model\.vision\.out_hidden_size=64 must equal model\.hidden_size=128"),
    ("model.vision.fullatt_block_indexes=[4]", r"model\.vision\.fullatt_block_indexes"),
    ("model.arch=llama", r"model\.arch='llama' is not a known architecture"),
    ("data.tokenizer=qwen3.5", r"data\.tokenizer='qwen3\.5' does not match model\.arch"),
    ("rollout.max_tokens=2048", r"rollout\.max_tokens=2048 must be <= data\.max_response_length"),
    ("optimizer.micro_batch_tokens=4096", r"optimizer\.micro_batch_tokens=4096 must hold one full sequence"),
    ("optimizer.grad_bucket_size=0", r"optimizer\.grad_bucket_size=0 must be > 0 or null"),
    ("distill.teacher_logit_tokens=0", r"distill\.teacher_logit_tokens=0 must be > 0"),
    ("eval_interval=-3", r"eval_interval=-3 must be >= 0"),
    ("rollout.seed=-1", r"rollout\.seed=-1 must be >= 0"),
    ("optimizer.grad_bucket_size=1000000", r"optimizer\.grad_bucket_size=1000000 has no effect without "
                                           r"optimizer\.overlap_grad_reduce=true"),
])
def test_impossible_combinations(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, TINY + [override])


def test_defaults_validate():
    validate(VopdConfig(), world_size=1, te_available=False)
    assert ModelConfig().head_dim == 32


def test_half_precision_without_master_weights_cannot_be_expressed():
    """There is no switch for master weights: bf16/fp16 parameters always get them (train/optim.py)."""
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer\.master_weights'.*valid keys of 'optimizer'"):
        load_config(None, TINY + ["model.params_dtype=bfloat16", "optimizer.master_weights=false"])


@pytest.mark.parametrize("dtype, distributed, cuda, optimizer, masters, adam", [
    ("bfloat16", False, True, "Float16OptimizerWithFloat16Params", "fp32, one copy per rank", "FusedAdam (Transformer Engine)"),
    ("bfloat16", True, True, "DistributedOptimizer", "fp32, sharded over data parallelism", "FusedAdam (Transformer Engine)"),
    ("float16", False, False, "Float16OptimizerWithFloat16Params", "fp32, one copy per rank", "CpuFusedAdam"),
    ("float32", False, False, "FP32Optimizer", "the fp32 parameters themselves", "CpuFusedAdam"),
    ("bfloat16", True, False, "DistributedOptimizer", "fp32, sharded over data parallelism", "CpuFusedAdam"),
])
def test_which_optimizer_is_built(dtype, distributed, cuda, optimizer, masters, adam):
    from megatron_vopd.train.optim import describe

    cfg = load_config(None, TINY + [f"model.params_dtype={dtype}", f"optimizer.distributed={str(distributed).lower()}"])
    chosen = describe(cfg.optimizer, cfg.model.params_dtype, cuda=cuda)
    assert chosen["optimizer"] == optimizer and chosen["masters"] == masters and chosen["adam"].startswith(adam)
    assert chosen["ddp"].startswith("megatron.core DistributedDataParallel (fp32 main grads")


def test_distributed_optimizer_on_cuda_without_fused_adam_is_refused():
    from megatron_vopd.train.optim import check_supported, describe

    cfg = load_config(None, TINY + ["model.params_dtype=bfloat16", "optimizer.distributed=true"]).optimizer
    with pytest.raises(ConfigError, match=r"optimizer\.distributed=true on CUDA needs FusedAdam from Transformer "
                                          r"Engine or apex.*set optimizer\.distributed=false"):
        check_supported(cfg, cuda=True, fused_adam=None)
    check_supported(cfg, cuda=True, fused_adam="apex")  # the GPU image
    check_supported(cfg, cuda=False, fused_adam=None)  # the CPU path: runtime/cpu_shims.CpuFusedAdam
    local = load_config(None, TINY + ["model.params_dtype=bfloat16"]).optimizer
    check_supported(local, cuda=True, fused_adam=None)  # the non-distributed optimizers reload torch's AdamW
    assert describe(local, "bfloat16", cuda=True, fused_adam=None)["adam"].startswith("torch.optim.AdamW")
