"""Qwen2.5-VL on Megatron-Core.

The language decoder is a Megatron-Core ``GPTModel`` with multimodal RoPE, tensor- and
pipeline-parallel. The vision tower (14-px patches, windowed and full attention blocks, 2x2 patch
merger) is transformers' own ``Qwen2_5_VisionTransformerPretrainedModel``, replicated on every TP
rank of the first pipeline stage, as Megatron-Bridge does: it is small next to the decoder and its
parameter names stay those of the Hugging Face checkpoint.

Inputs are batch-first token ids ``[B, S]``; the image features replace the image-token embeddings
in batch-major order; position ids are ``[3, B, S]`` (see ``mrope.py``).
"""

from __future__ import annotations

import torch

from megatron_vopd.config import ModelConfig, ParallelConfig
from megatron_vopd.models.qwen25_vl.hf_config import hf_vision_config
from megatron_vopd.models.specs import checked_transformer_impl, common_settings, layer_spec
from megatron_vopd.models.stage import VisionLanguageStage, place_stage


def transformer_config(model: ModelConfig, parallel: ParallelConfig, impl: str, init_weights: bool = True):
    """Megatron TransformerConfig of the Qwen2.5-VL language decoder: RMSNorm, SwiGLU, GQA with a
    QKV bias, contiguous mrope sections (the settings every family shares: ``specs.common_settings``)."""
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=model.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=True,
        mrope_section=list(model.mrope_section),
        rotary_interleaved=False,
        **common_settings(model, parallel, init_weights),
    )


class Qwen25VLModel(VisionLanguageStage):
    """One pipeline stage of Qwen2.5-VL: vision tower and embedding on the first stage, output layer
    on the last (the plumbing: ``stage.VisionLanguageStage``)."""

    def __init__(self, model: ModelConfig, parallel: ParallelConfig, *, pre_process: bool = True,
                 post_process: bool = True, te_available: bool | None = None, init_weights: bool = True):
        from megatron.core.models.gpt import GPTModel
        from megatron.core.transformer.enums import ModelType

        impl = checked_transformer_impl(model, te_available)
        super().__init__(config=transformer_config(model, parallel, impl, init_weights))
        self.model_cfg, self.transformer_impl = model, impl
        self.model_type = ModelType.encoder_or_decoder
        self.pre_process, self.post_process = pre_process, post_process
        self.vision_model = None  # first stage only
        if pre_process:
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

            vision_cfg = hf_vision_config(model)
            vision_cfg._attn_implementation = "sdpa" if torch.cuda.is_available() else "eager"
            self.vision_model = Qwen2_5_VisionTransformerPretrainedModel._from_config(
                vision_cfg, dtype=self.config.params_dtype)
        self.language_model = GPTModel(
            config=self.config,
            transformer_layer_spec=layer_spec(self.transformer_impl),
            vocab_size=model.vocab_size,
            max_sequence_length=model.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=model.tie_word_embeddings,
            position_embedding_type="mrope",
            rotary_percent=1.0,
            rotary_base=int(model.rope_theta),
            scatter_embedding_sequence_parallel=False,  # image features are merged first (VisionLanguageStage.embed)
        )
        self.select_response_positions()


def build_model(model: ModelConfig, parallel: ParallelConfig, te_available: bool | None = None,
                init_weights: bool = True) -> Qwen25VLModel:
    """The local pipeline stage of the model for the current Megatron parallel state.

    ``init_weights=False`` for a model whose weights are loaded next (conversion, checkpoints)."""
    from megatron.core import parallel_state as ps

    return place_stage(Qwen25VLModel(model, parallel, pre_process=ps.is_pipeline_first_stage(),
                                     post_process=ps.is_pipeline_last_stage(), te_available=te_available,
                                     init_weights=init_weights))
