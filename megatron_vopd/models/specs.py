"""Layer specs and the TransformerConfig settings every model family shares.

``transformer_impl`` picks the layer spec: "local" (pure megatron-core modules: the CPU path),
"transformer_engine" (TE modules; required for FP8) or "auto" (TE when it imports and CUDA is present).
"""

from __future__ import annotations

import torch

from megatron_vopd.config import (ConfigError, ModelConfig, ParallelConfig, resolve_transformer_impl,
                                  transformer_engine_available)
from megatron_vopd.runtime.dtypes import torch_dtype

# Parameter attribute: replicated over TP but applied to head-sharded activations, so each rank's
# gradient covers its own heads only and the optimizer sums it over TP (train/optim.py).
TP_PARTIAL_GRAD = "tp_partial_grad"


def checked_transformer_impl(model: ModelConfig, te_available: bool | None = None) -> str:
    """The resolved ``model.transformer_impl``; refuses TE or FP8 where Transformer Engine is missing."""
    te = transformer_engine_available() if te_available is None else te_available
    impl = resolve_transformer_impl(model, te)
    if impl == "transformer_engine" and not te:
        raise ConfigError("model.transformer_impl='transformer_engine' needs Transformer Engine with CUDA, "
                          "which is not available here; set model.transformer_impl=local")
    if model.fp8 is not None and impl != "transformer_engine":
        raise ConfigError(f"model.fp8={model.fp8!r} needs Transformer Engine (model.transformer_impl="
                          "transformer_engine with CUDA); unset model.fp8 to train without FP8")
    return impl


def layer_spec(impl: str):
    """The GPT decoder layer spec for a resolved ``transformer_impl``."""
    from megatron.core.models.gpt import gpt_layer_specs

    if impl == "transformer_engine":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")


def fp8_settings(model: ModelConfig) -> dict:
    """TransformerConfig keys for the config's FP8 format and recipe (empty without FP8)."""
    if model.fp8 is None:
        return {}
    return {"fp8": model.fp8, "fp8_recipe": model.fp8_recipe, "fp8_param": False}


def decoder_settings(model: ModelConfig) -> dict:
    """The TransformerConfig keys of a Qwen decoder's sizes and its fixed parts: RMSNorm, SwiGLU, no linear bias."""
    import torch.nn.functional as F

    return dict(num_layers=model.num_layers, hidden_size=model.hidden_size, ffn_hidden_size=model.ffn_hidden_size,
                num_attention_heads=model.num_attention_heads, num_query_groups=model.num_query_groups,
                kv_channels=model.head_dim, normalization="RMSNorm", layernorm_epsilon=model.rms_norm_eps,
                gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False)


def common_settings(model: ModelConfig, parallel: ParallelConfig, init_weights: bool = True) -> dict:
    """The TransformerConfig keys every family's decoder shares: parallelism, dtype, dropout off,
    per-token loss, fusions, recompute, FP8.

    ``init_weights=False`` leaves parameters uninitialised (torch.empty) for a model whose weights are
    about to be loaded: random initialisation on the CPU draws every full weight in fp32 first."""
    dtype = torch_dtype(model.params_dtype)
    cpu = not torch.cuda.is_available()
    return dict(
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        variable_seq_lengths=True,  # micro-batches of different lengths through the pipeline
        # losses are normalised by the step's global token count: DDP sums gradients over data
        # parallelism instead of averaging them
        calculate_per_token_loss=True,
        moe_token_dispatcher_type="alltoall",  # (no experts; the default dispatcher refuses variable lengths)
        use_cpu_initialization=cpu,
        perform_initialization=init_weights,
        # Fusions need CUDA kernels (apex/TE); the TE path turns on what TE provides.
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        recompute_granularity="full" if model.recompute else None,
        recompute_method="uniform" if model.recompute else None,
        recompute_num_layers=1 if model.recompute else None,
        **fp8_settings(model),
    )
