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

from megatron_vopd.config import ModelConfig, ParallelConfig
from megatron_vopd.models.qwen25_vl.hf_config import hf_vision_config
from megatron_vopd.models.specs import checked_transformer_impl, common_settings, decoder_settings, layer_spec
from megatron_vopd.models.stage import VisionLanguageStage, place_stage


def transformer_config(model: ModelConfig, parallel: ParallelConfig, impl: str, init_weights: bool = True):
    """Megatron TransformerConfig of the Qwen2.5-VL language decoder: RMSNorm, SwiGLU, GQA with a
    QKV bias, contiguous mrope sections (the settings every family shares: ``specs.common_settings``)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        **decoder_settings(model),
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
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        impl = checked_transformer_impl(model, te_available)
        super().__init__(model, transformer_config(model, parallel, impl, init_weights), impl,
                         pre_process=pre_process, post_process=post_process,
                         vision_class=Qwen2_5_VisionTransformerPretrainedModel, vision_config=hf_vision_config(model),
                         layer_spec=layer_spec(impl))


def build_model(model: ModelConfig, parallel: ParallelConfig, te_available: bool | None = None,
                init_weights: bool = True) -> Qwen25VLModel:
    """The local pipeline stage of the model for the current Megatron parallel state.

    ``init_weights=False`` for a model whose weights are loaded next (conversion, checkpoints)."""
    from megatron.core import parallel_state as ps

    return place_stage(Qwen25VLModel(model, parallel, pre_process=ps.is_pipeline_first_stage(),
                                     post_process=ps.is_pipeline_last_stage(), te_available=te_available,
                                     init_weights=init_weights))
