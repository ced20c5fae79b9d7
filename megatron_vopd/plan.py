"""Per-GPU memory plan of a Vision-OPD run: pure arithmetic on the config, no torch.

``vopd plan`` prints it. Everything is bytes per GPU on the WORST pipeline stage of one layout
(tensor parallel TP x pipeline parallel PP; data parallel DP = world // (TP * PP)).

Parameters (:func:`parameter_counts`) are exact, counted by the model's family
(``Architecture.parameter_counts``; checked against transformers' model in tests/test_plan.py).

Training state, per parameter held by a rank (``n`` = parameters on that rank, ``w`` = bytes of
``model.params_dtype``: 2 for bf16/fp16, 4 for fp32), what ``train/optim.py`` builds:

- weights: ``w n``
- gradients: the fp32 main-grad buffer of Megatron's DDP, ``4 n`` (full on every rank, also with the
  distributed optimizer, which reduce-scatters inside it)
- masters: fp32 master weights of bf16/fp16 parameters, ``4 n``; 0 for fp32 parameters (their own
  masters); with the distributed optimizer (``optimizer.distributed``) ``ceil(4 n / DP)``
- optimizer: AdamW exp_avg + exp_avg_sq in fp32, ``8 n``; distributed ``ceil(8 n / DP)``
- teacher: the EMA (or frozen) teacher copy in the model dtype, ``w n``; plus, for an EMA teacher with
  bf16/fp16 weights, its fp32 copy (``teacher_ema32``), sharded over data parallelism whatever the
  optimizer (``distill/fp32_copy.py``): ``ceil(4 n / DP)``; 0 for ``distill.teacher=current`` (the
  student's own weights under no_grad)

Which parameters a rank holds: a PP stage holds its ``num_layers / PP`` consecutive layers (the
family's ``Architecture.decoder_layers``: each layer's kind and exact parameters; Qwen3.5 mixes Gated
DeltaNet and full-attention layers), each split over TP (``ceil(layer / TP)``, norms counted as split
too: they are < 0.01% of a layer). The first stage also holds the word embedding (``ceil(vocab *
hidden / TP)``) and the whole vision tower (replicated, not TP-split); the last stage holds the final
norm and the output layer (``ceil(vocab * hidden / TP)``; with tied embeddings and PP > 1 Megatron
keeps a copy there, with PP = 1 it is the embedding itself). Both end stages are evaluated and the
larger is reported.

Activations (decoder only; the vision tower's activations are small next to them and left out),
``s`` = ``optimizer.micro_batch_tokens`` (dynamic batching packs one micro-batch of s tokens,
b = 1), ``h`` hidden, ``a`` heads, ``L`` layers of the stage, no sequence parallelism:

- one full-attention layer's activations (Korthikanti et al. 2022, "Reducing Activation Recomputation
  in Large Transformer Models", eq. 2): ``s*b*h*(34 + 5*a*s/h) / TP`` bytes: attention 11sh (+ 5as^2),
  MLP 19sh, the two norms 4sh. The ``5*a*s/h`` term is the attention score/softmax/dropout
  matrices; fused/flash attention (Transformer Engine) never stores them, so with
  ``flash_attention=True`` (the default, how Megatron runs here) it is ``34*s*b*h / TP``.
- one Gated DeltaNet layer: the same MLP and norms (23sh) plus what the GDN mixer keeps for backward
  (``gdn_mixer_bytes``: the in_proj input and its q/k/v/z/b/a outputs, the conv1d and SiLU outputs,
  the l2-normalised q/k, fp32 gates, the core output, the gated norm, and the chunked rule's
  chunk-boundary states, ``ceil(s/64) * value heads * key dim * value dim``), all ``/ TP``.
- with full recompute (``model.recompute``): each layer keeps only its input, ``2*s*b*h`` bytes
  (bf16, not TP-split without sequence parallelism; ``/TP`` with it), plus ONE layer's full
  activations (the largest kind) while it is recomputed: ``L * 2sbh + one_layer``.
- without recompute: the sum over the stage's layers.
- pipeline 1F1B: the first stage holds up to PP micro-batches in flight, so its stored
  activations (the checkpoints, or all layers without recompute) are multiplied by PP; the last
  stage holds one.
- logits on the last stage: the model emits logits at response positions only, at most ``s`` per
  micro-batch: ``s * vocab / TP * 4`` bytes (bf16 logits and their gradient, or fp32 logits).
- teacher logits (``objective=vision_opd``) on the last stage: the teacher's logits of
  ``distill.teacher_logit_tokens`` response tokens are held while the student trains on them:
  ``teacher_logit_tokens * vocab / TP * w``.

Rollout (vLLM, colocated): it may take ``rollout.gpu_memory_utilization * gpu_gib``. Its weights
are ``2 * total_params / rollout.tensor_parallel_size``; the rest is cache. The family's
``Architecture.rollout_cache`` gives the KV bytes per token (``2 (K and V) * full-attention layers *
kv_heads * head_dim * 2 (bf16)``) and the recurrent-state bytes per sequence (Gated DeltaNet: value
heads x key dim x value dim + the conv window, bf16, per linear layer; 0 for a plain decoder), both
``/ rollout TP``. The cache holds ``kv_budget // (max_model_len * kv_per_token + state)`` full-length
sequences at once (``rollout_sequences``; ``kv_tokens`` = those tokens, or ``kv_budget //
kv_per_token`` without state). Training must fit in the remaining ``(1 - gpu_memory_utilization) *
gpu_gib``; the rollout must hold at least one full sequence (``rollout.max_model_len`` tokens).
``fits`` is both.

Engines (``rollout/layout.py``): ``world / rollout.tensor_parallel_size`` of them, one per group of
consecutive GPUs of a node, so every GPU holds its engine's share. Phases: while generating a GPU holds
the training state that persists (weights, gradients, masters, optimizer, teachers: ``persistent``)
plus the vLLM budget (``phase_generation``); while training it holds the training total plus the vLLM
budget, or nothing of vLLM with ``rollout.sleep`` 1/2 (``phase_training``; vLLM's sleep frees its
weights and KV cache, and training may then use the whole GPU). ``fits``: both phases within the GPU
and the rollout holds a sequence (without sleep this is the training total within ``(1 -
gpu_memory_utilization) * gpu_gib``). CUDA contexts and allocator caches are outside the plan.
"""

from __future__ import annotations

from typing import Any

from megatron_vopd.architecture import architecture
from megatron_vopd.config import ConfigError, ModelConfig, VopdConfig
from megatron_vopd.rollout.layout import EngineLayout

GIB = 1024**3

BYTES_WEIGHT = 2  # bf16: the rollout engine's weights
BYTES_PARAM = {"bfloat16": 2, "float16": 2, "float32": 4}  # the training weights, by model.params_dtype
BYTES_GRAD = 4  # fp32 main grads (Megatron DDP)
BYTES_MASTER = 4  # fp32 master weights of half-precision parameters
BYTES_MOMENTS = 8  # AdamW exp_avg + exp_avg_sq, fp32
BYTES_EMA32 = 4  # the fp32 copy of a half-precision EMA teacher


# --------------------------------------------------------------------------- parameters


def parameter_counts(model: ModelConfig) -> dict[str, int]:
    """Exact parameter counts of the model, by part (its family's ``Architecture.parameter_counts``).

    Keys: embedding, decoder_layer (one layer), decoder_layers (all), final_norm, lm_head (0 when
    tied), language_model (embedding + layers + final norm + lm_head), vision (tower + merger),
    total, and the family's own breakdown of the vision tower."""
    return architecture(model.arch).parameter_counts(model)


# --------------------------------------------------------------------------- one layout

PERSISTENT_PARTS = ("weights", "gradients", "masters", "optimizer", "teacher", "teacher_ema32")  # kept while generating
TRAINING_PARTS = PERSISTENT_PARTS + ("activations", "logits", "teacher_logits")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def stage_layers(model: ModelConfig, pp: int, stage: str) -> list[tuple[str, int]]:
    """(kind, parameters) of the decoder layers of the 'first', 'last' or 'only' (PP = 1) stage."""
    layers = architecture(model.arch).decoder_layers(model)
    per_stage = model.num_layers // pp
    return layers[:per_stage] if stage in ("first", "only") else layers[-per_stage:]


def stage_params(model: ModelConfig, tp: int, pp: int, stage: str) -> int:
    """Parameters one rank of the 'first', 'last' or 'only' (PP = 1) stage holds."""
    c = parameter_counts(model)
    n = sum(_ceil_div(p, tp) for _, p in stage_layers(model, pp, stage))
    vocab_shard = _ceil_div(c["embedding"], tp)
    if stage in ("first", "only"):
        n += vocab_shard + c["vision"]
    if stage in ("last", "only"):
        n += c["final_norm"]
        if not model.tie_word_embeddings or stage == "last":  # tied + PP>1: a copy on the last stage
            n += vocab_shard
    return n


GDN_CHUNK = 64  # the chunk length of the chunked gated delta rule (fla and the torch reference)


def gdn_mixer_bytes(model: ModelConfig, tokens: int) -> int:
    """What one Gated DeltaNet mixer keeps for backward for a micro-batch of ``tokens`` (bf16, fp32 gates)."""
    d, s, h = model.decoder, tokens, model.hidden_size
    k, v, heads = d.linear_num_key_heads * d.linear_key_head_dim, d.linear_num_value_heads * d.linear_value_head_dim, \
        d.linear_num_value_heads
    return (2 * s * h  # in_proj input
            + 2 * s * (2 * k + 2 * v + 2 * heads)  # its q, k, v, z, b, a outputs
            + 2 * 2 * s * (2 * k + v)  # conv1d output and its SiLU
            + 2 * s * 2 * k  # l2-normalised q and k
            + 4 * s * 2 * heads  # g and beta in fp32
            + 2 * s * v  # the rule's output
            + 2 * 2 * s * v  # the gated norm: SiLU(z) and its output (the out_proj input)
            + 2 * _ceil_div(s, GDN_CHUNK) * heads * d.linear_key_head_dim * d.linear_value_head_dim)  # chunk states


def layer_activation_bytes(model: ModelConfig, tokens: int, tp: int, flash_attention: bool = True,
                           kind: str = "full_attention") -> int:
    """One decoder layer's stored activations for a micro-batch of `tokens` (b=1), per TP rank: a
    full-attention layer s*h*(34 + 5*a*s/h)/TP (no 5as/h term under flash attention); a Gated DeltaNet
    layer (MLP and norms 23sh + its mixer)/TP."""
    s, h, a = tokens, model.hidden_size, model.num_attention_heads
    if kind == "linear_attention":
        return _ceil_div(23 * s * h + gdn_mixer_bytes(model, s), tp)
    per = 34 * s * h + (0 if flash_attention else 5 * a * s * s)
    return _ceil_div(per, tp)


def activation_bytes(model: ModelConfig, tokens: int, tp: int, pp: int, stage: str, *,
                     sequence_parallel: bool = False, flash_attention: bool = True) -> int:
    """Stored decoder activations of one rank of `stage` (see the module docstring)."""
    kinds = [kind for kind, _ in stage_layers(model, pp, stage)]
    in_flight = pp if stage == "first" else 1
    per_layer = [layer_activation_bytes(model, tokens, tp, flash_attention, kind) for kind in kinds]
    if model.recompute:
        checkpoint = 2 * tokens * model.hidden_size
        if sequence_parallel:
            checkpoint = _ceil_div(checkpoint, tp)
        return in_flight * len(kinds) * checkpoint + max(per_layer)
    return in_flight * sum(per_layer)


def memory_plan(cfg: VopdConfig, *, nodes: int, gpus_per_node: int, tp: int, pp: int, gpu_gib: float = 80,
                distributed_optimizer: bool | None = None, flash_attention: bool = True) -> dict[str, Any]:
    """Per-GPU bytes of one (TP, PP) layout on the worst stage, plus the rollout's KV cache and `fits`.

    ``distributed_optimizer`` None: the config's ``optimizer.distributed``."""
    m, r = cfg.model, cfg.rollout
    world = nodes * gpus_per_node
    if tp < 1 or pp < 1 or world % (tp * pp):
        raise ConfigError(f"TP * PP = {tp} * {pp} does not divide the world size {world} ({nodes} x {gpus_per_node})")
    dp = world // (tp * pp)
    tokens = cfg.optimizer.micro_batch_tokens
    if distributed_optimizer is None:
        distributed_optimizer = cfg.optimizer.distributed
    shard = (lambda b: _ceil_div(b, dp)) if distributed_optimizer else (lambda b: b)
    w = BYTES_PARAM[m.params_dtype]
    half = m.params_dtype != "float32"
    teacher_copy = cfg.distill.teacher != "current"

    def stage_plan(stage: str) -> dict[str, Any]:
        n = stage_params(m, tp, pp, stage)
        plan = {
            "stage": stage,
            "params": n,
            "weights": w * n,
            "gradients": BYTES_GRAD * n,
            "masters": shard(BYTES_MASTER * n) if half else 0,
            "optimizer": shard(BYTES_MOMENTS * n),
            "teacher": w * n if teacher_copy else 0,
            "teacher_ema32": _ceil_div(BYTES_EMA32 * n, dp) if half and cfg.distill.teacher == "ema" else 0,
            "activations": activation_bytes(m, tokens, tp, pp, stage, sequence_parallel=cfg.parallel.sequence_parallel,
                                            flash_attention=flash_attention),
            "logits": tokens * _ceil_div(m.vocab_size, tp) * 4 if stage in ("last", "only") else 0,
            "teacher_logits": (cfg.distill.teacher_logit_tokens * _ceil_div(m.vocab_size, tp) * w
                               if stage in ("last", "only") and cfg.objective == "vision_opd" else 0),
        }
        plan["training_total"] = sum(plan[k] for k in TRAINING_PARTS)
        return plan

    stages = ["only"] if pp == 1 else ["first", "last"]
    worst = max((stage_plan(s) for s in stages), key=lambda p: p["training_total"])

    engines = EngineLayout(world, gpus_per_node, r.tensor_parallel_size)
    gpu_bytes = int(gpu_gib * GIB)
    rollout_bytes = int(r.gpu_memory_utilization * gpu_bytes)
    asleep = r.sleep > 0  # vLLM frees its GPU memory while training runs
    training_budget = gpu_bytes - (0 if asleep else rollout_bytes)
    persistent = sum(worst[k] for k in PERSISTENT_PARTS)
    total = parameter_counts(m)["total"]
    rollout_weights = _ceil_div(BYTES_WEIGHT * total, r.tensor_parallel_size)
    kv_budget = rollout_bytes - rollout_weights
    kv_token_bytes, state_sequence_bytes = architecture(m.arch).rollout_cache(m)
    kv_per_token = _ceil_div(kv_token_bytes, r.tensor_parallel_size)
    state_per_sequence = _ceil_div(state_sequence_bytes, r.tensor_parallel_size)
    sequences = max(kv_budget, 0) // (r.max_model_len * kv_per_token + state_per_sequence)
    kv_tokens = sequences * r.max_model_len if state_per_sequence else max(kv_budget, 0) // kv_per_token
    phase_generation = persistent + rollout_bytes
    phase_training = worst["training_total"] + (0 if asleep else rollout_bytes)
    training_fits = worst["training_total"] <= training_budget and phase_generation <= gpu_bytes
    rollout_fits = sequences >= 1
    return {
        "nodes": nodes, "gpus_per_node": gpus_per_node, "world_size": world, "tp": tp, "pp": pp, "dp": dp,
        "gpu_bytes": gpu_bytes, "micro_batch_tokens": tokens, "distributed_optimizer": distributed_optimizer,
        "flash_attention": flash_attention, "recompute": m.recompute,
        **worst,
        "training_budget": training_budget,
        "rollout_budget": rollout_bytes,
        "rollout_tp": r.tensor_parallel_size,
        "engines": engines.n_engines,
        "engines_per_node": gpus_per_node // r.tensor_parallel_size,
        "rollout_sleep": r.sleep,
        "persistent": persistent,
        "phase_generation": phase_generation,
        "phase_training": phase_training,
        "rollout_weights": rollout_weights,
        "kv_cache": max(kv_budget, 0),
        "kv_bytes_per_token": kv_per_token,
        "kv_tokens": kv_tokens,
        "state_bytes_per_sequence": state_per_sequence,
        "rollout_sequences": sequences,
        "total": max(phase_generation, phase_training),
        "training_fits": training_fits,
        "rollout_fits": rollout_fits,
        "fits": training_fits and rollout_fits,
    }


# --------------------------------------------------------------------------- all layouts


def candidate_layouts(cfg: VopdConfig, nodes: int, gpus_per_node: int, *, gpu_gib: float = 80,
                      distributed_optimizer: bool | None = None) -> list[dict[str, Any]]:
    """Every (TP, PP) with TP dividing the heads and KV groups, TP <= gpus_per_node, PP dividing the
    layers and TP * PP dividing the world size, each with its plan; fitting layouts first, then the
    most data-parallel (the fastest: least model-parallel communication and pipeline bubble; TP before
    PP on equal size, TP stays inside a node), then by training memory."""
    m = cfg.model
    world = nodes * gpus_per_node
    plans = []
    family = architecture(m.arch)
    for tp in range(1, gpus_per_node + 1):
        if m.num_attention_heads % tp or m.num_query_groups % tp or family.check_parallel(m, tp):
            continue
        for pp in range(1, m.num_layers + 1):
            if m.num_layers % pp or world % (tp * pp):
                continue
            plans.append(memory_plan(cfg, nodes=nodes, gpus_per_node=gpus_per_node, tp=tp, pp=pp, gpu_gib=gpu_gib,
                                     distributed_optimizer=distributed_optimizer))
    plans.sort(key=lambda p: (not p["fits"], p["tp"] * p["pp"], p["pp"], p["training_total"]))
    return plans


# --------------------------------------------------------------------------- text


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def format_plan(plan: dict[str, Any], name: str = "") -> str:
    """One layout's components, one per line, in GiB."""
    head = (f"{name + ': ' if name else ''}{plan['nodes']} node(s) x {plan['gpus_per_node']} GPUs "
            f"({plan['gpu_bytes'] / GIB:.0f} GiB each), TP={plan['tp']} PP={plan['pp']} DP={plan['dp']}, "
            f"worst stage: {plan['stage']}, micro-batch {plan['micro_batch_tokens']} tokens, "
            f"recompute={'on' if plan['recompute'] else 'off'}, "
            f"optimizer {'distributed over DP' if plan['distributed_optimizer'] else 'not distributed'}")
    w = {2: "bf16", 4: "fp32"}.get(plan["weights"] // max(plan["params"], 1), "")
    rows = [
        ("parameters on this GPU", f"{plan['params'] / 1e9:.3f} B"),
        (f"weights ({w})", _gib(plan["weights"]) + " GiB"),
        ("gradients (fp32 main grads)", _gib(plan["gradients"]) + " GiB"),
        ("master weights (fp32)", _gib(plan["masters"]) + " GiB"),
        ("optimizer (AdamW moments, fp32 x2)", _gib(plan["optimizer"]) + " GiB"),
        ("teacher / EMA copy", _gib(plan["teacher"]) + " GiB"),
        ("teacher EMA fp32 copy", _gib(plan["teacher_ema32"]) + " GiB"),
        ("activations", _gib(plan["activations"]) + " GiB"),
        ("logits (response tokens)", _gib(plan["logits"]) + " GiB"),
        ("teacher logits (held)", _gib(plan["teacher_logits"]) + " GiB"),
        ("training total", _gib(plan["training_total"]) + " GiB"),
        ("training budget", _gib(plan["training_budget"]) + " GiB"),
        (f"vLLM weights (rollout TP={plan['rollout_tp']})", _gib(plan["rollout_weights"]) + " GiB"),
        ("vLLM KV cache", f"{_gib(plan['kv_cache'])} GiB ({plan['kv_tokens']:,} tokens, "
                          f"{plan['rollout_sequences']:,} full-length sequences"
                          + (f", {plan['state_bytes_per_sequence'] / 2**20:.1f} MiB GDN state each)"
                             if plan["state_bytes_per_sequence"] else ")")),
        ("vLLM budget", _gib(plan["rollout_budget"]) + " GiB"),
        ("vLLM engines", f"{plan['engines']} (TP {plan['rollout_tp']}, {plan['engines_per_node']} per node: every GPU "
                         "holds its engine's share)"),
        ("while generating", f"{_gib(plan['phase_generation'])} GiB (training state {_gib(plan['persistent'])} + vLLM)"),
        ("while training", f"{_gib(plan['phase_training'])} GiB ("
                           + ("vLLM asleep, rollout.sleep=" + str(plan["rollout_sleep"]) if plan["rollout_sleep"]
                              else "vLLM awake: rollout.sleep=0") + ")"),
        ("fits", "yes" if plan["fits"] else
         "NO (" + ", ".join(w for w, ok in (("training", plan["training_fits"]), ("rollout", plan["rollout_fits"]))
                            if not ok) + ")"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [head] + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def format_table(plans: list[dict[str, Any]]) -> str:
    """The candidate layouts, one per row, GiB per GPU (worst stage)."""
    cols = [("TP", 3), ("PP", 3), ("DP", 4), ("stage", 6), ("weights", 8), ("grads", 8), ("masters", 8),
            ("optim", 8), ("teacher", 8), ("activ", 8), ("logits", 8), ("train", 8), ("budget", 8), ("KV GiB", 8),
            ("KV tokens", 11), ("fits", 4)]
    lines = ["  ".join(f"{c:>{w}}" for c, w in cols)]
    for p in plans:
        vals = [p["tp"], p["pp"], p["dp"], p["stage"], _gib(p["weights"]), _gib(p["gradients"]), _gib(p["masters"]),
                _gib(p["optimizer"]), _gib(p["teacher"] + p["teacher_ema32"]), _gib(p["activations"]), _gib(p["logits"] + p["teacher_logits"]), _gib(p["training_total"]),
                _gib(p["training_budget"]), _gib(p["kv_cache"]), f"{p['kv_tokens']:,}", "yes" if p["fits"] else "no"]
        lines.append("  ".join(f"{str(v):>{w}}" for v, (_, w) in zip(vals, cols)))
    return "\n".join(lines)
