"""Qwen3.5 on Megatron-Core: the hybrid decoder (Gated DeltaNet + gated full attention) and the vision tower.

The decoder is a Megatron-Core ``GPTModel`` whose block has one layer spec per layer, from
``model.decoder.layer_types``: megatron-core's own ``GatedDeltaNet`` for "linear_attention" layers,
its ``SelfAttention`` with the sigmoid output gate and q/k norms for "full_attention" layers. Every
decoder norm is zero-centred, ``(1 + w) * x / rms(x)`` in fp32 as transformers computes it (so the
HF weight is stored as it is); the GDN's own gated norm is plain ``w``. Rotary: ``partial_rotary``
of the head dim, with the THW sections INTERLEAVED (``InterleavedMRoPE``). GDN ignores the
attention mask: padded positions are zeroed before every GDN layer, as transformers does.

Two layer specs (``model.transformer_impl``): the LOCAL one (``layer_specs``: megatron-core modules and
torch norms; the CPU path) and the Transformer Engine one (``te_block_spec``: megatron-core's hybrid
block builder for ``experimental_attention_variant="gated_delta_net"``, TE linears with the pre-norms
fused in, TE's zero-centred RMSNorm, fla's kernels inside GatedDeltaNet), with two substitutions: the
padding-aware GDN below, and a plain (not zero-centred) TE norm for the GDN's gated output norm.

The vision tower (16-px patches, learned position embedding, 2x2 merger) is transformers' own
``Qwen3_5VisionModel``, replicated on every TP rank of the first pipeline stage (as for Qwen2.5-VL).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from megatron_vopd.config import ModelConfig, ParallelConfig
from megatron_vopd.models.mrope import InterleavedMRoPE
from megatron_vopd.models.specs import TP_PARTIAL_GRAD, checked_transformer_impl, common_settings, decoder_settings
from megatron_vopd.models.stage import VisionLanguageStage, place_stage


class ZeroCentredRMSNorm(torch.nn.Module):
    """RMSNorm with a zero-centred weight: ``(x / rms(x)) * (1 + w)`` in fp32, cast back (transformers'
    ``Qwen3_5RMSNorm``). Takes the arguments Megatron's ``build_module`` passes to a norm."""

    def __init__(self, config=None, hidden_size: int = 0, eps: float = 1e-6, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size))
        if config is not None and config.sequence_parallel:
            self.weight.sequence_parallel = True  # its gradient is all-reduced over TP (replicated weight)

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


def _gdn_class():
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet

    class MaskedGatedDeltaNet(GatedDeltaNet):
        """megatron-core's GatedDeltaNet with the padded positions zeroed first (the layer itself ignores
        the attention mask; transformers zeroes them too), so left and right padding agree. Its output
        norm weight is replicated over TP but sees only this rank's heads: its gradient is summed over
        TP (``train.optim.TP_PARTIAL_GRAD``)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            setattr(self.out_norm.weight, TP_PARTIAL_GRAD, True)

        def forward(self, hidden_states: Tensor, attention_mask: Tensor | None, *args, **kwargs):
            if attention_mask is not None:  # [B, 1, S, S] True = masked; its last row masks only the padding
                keep = ~attention_mask[:, 0, -1, :]  # [B, S]
                hidden_states = hidden_states * keep.transpose(0, 1)[..., None].to(hidden_states.dtype)
            return super().forward(hidden_states, attention_mask, *args, **kwargs)

    return MaskedGatedDeltaNet


def layer_specs(layer_types: list[str]) -> list:
    """The local layer spec of each layer type (CPU path): zero-centred norms, gated attention with
    q/k norms, or the GDN with ColumnParallel in_proj / torch RMSNorm / RowParallel out_proj."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.ssm.gated_delta_net import GatedDeltaNetSubmodules
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    base = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=True)
    attn = base.submodules.self_attention
    attention = dataclasses.replace(attn, submodules=dataclasses.replace(
        attn.submodules, q_layernorm=ZeroCentredRMSNorm, k_layernorm=ZeroCentredRMSNorm))
    gdn = ModuleSpec(module=_gdn_class(), submodules=GatedDeltaNetSubmodules(
        in_proj=ColumnParallelLinear, out_norm=WrappedTorchNorm, out_proj=RowParallelLinear))
    out = []
    for kind in layer_types:
        mixer = gdn if kind == "linear_attention" else attention
        out.append(dataclasses.replace(base, submodules=dataclasses.replace(
            base.submodules, input_layernorm=ZeroCentredRMSNorm, pre_mlp_layernorm=ZeroCentredRMSNorm,
            self_attention=mixer)))
    return out


def _plain_te_norm():
    from megatron.core.extensions.transformer_engine import TENorm

    class PlainTENorm:
        """TE's RMSNorm WITHOUT the zero-centred gamma the decoder's config asks for: the GDN's gated
        output norm multiplies by ``w`` itself (transformers' ``Qwen3_5RMSNormGated``)."""

        def __new__(cls, config, hidden_size: int, eps: float = 1e-6):
            return TENorm(dataclasses.replace(config, layernorm_zero_centered_gamma=False), hidden_size, eps)

    return PlainTENorm


def te_block_spec(config, pp_rank: int):
    """The Transformer Engine block spec of this pipeline stage: megatron-core's hybrid block builder
    (it slices the layer pattern per stage), with the padding-aware GDN and its plain output norm."""
    from megatron.core.models.gpt.experimental_attention_variant_module_specs import (
        get_transformer_block_with_experimental_attention_variant_spec)
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet

    spec = get_transformer_block_with_experimental_attention_variant_spec(config, pp_rank=pp_rank)
    gdn, norm = _gdn_class(), _plain_te_norm()
    layers = []
    for layer in spec.layer_specs:
        mixer = layer.submodules.self_attention
        if mixer.module is GatedDeltaNet:
            mixer = dataclasses.replace(mixer, module=gdn,
                                        submodules=dataclasses.replace(mixer.submodules, out_norm=norm))
            layer = dataclasses.replace(layer, submodules=dataclasses.replace(layer.submodules, self_attention=mixer))
        layers.append(layer)
    return dataclasses.replace(spec, layer_specs=layers)


def te_settings(model: ModelConfig, impl: str) -> dict:
    """TransformerConfig keys of the TE spec: the hybrid pattern for megatron-core's block builder (1 =
    Gated DeltaNet) and zero-centred norms done by TE itself. Empty for the local spec."""
    if impl != "transformer_engine":
        return {}
    return dict(transformer_impl="transformer_engine", experimental_attention_variant="gated_delta_net",
                linear_attention_freq=[int(t == "linear_attention") for t in model.decoder.layer_types],
                layernorm_zero_centered_gamma=True)


def transformer_config(model: ModelConfig, parallel: ParallelConfig, impl: str, init_weights: bool = True):
    """Megatron TransformerConfig of the Qwen3.5 decoder (SwiGLU, GQA without bias, gated attention,
    GDN head sizes from ``model.decoder``; the TE spec's keys for ``impl="transformer_engine"``)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    q = model.decoder
    return TransformerConfig(
        **decoder_settings(model),
        add_qkv_bias=False,
        qk_layernorm=True,
        attention_output_gate=True,
        mrope_section=list(model.mrope_section),
        rotary_interleaved=False,
        linear_conv_kernel_dim=q.linear_conv_kernel_dim,
        linear_key_head_dim=q.linear_key_head_dim,
        linear_value_head_dim=q.linear_value_head_dim,
        linear_num_key_heads=q.linear_num_key_heads,
        linear_num_value_heads=q.linear_num_value_heads,
        # layers of two kinds: one checkpoint key per layer (not one stacked key per kind of tensor)
        hetereogenous_dist_checkpoint=True,
        **te_settings(model, impl),
        **common_settings(model, parallel, init_weights),
    )


class Qwen35Model(VisionLanguageStage):
    """One pipeline stage of Qwen3.5: vision tower and embedding on the first stage, output layer on
    the last. The interface of ``Qwen25VLModel`` (inputs, ``logit_positions``, outputs)."""

    def __init__(self, model: ModelConfig, parallel: ParallelConfig, *, pre_process: bool = True,
                 post_process: bool = True, te_available: bool | None = None, init_weights: bool = True):
        from megatron.core import parallel_state as ps
        from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

        from megatron_vopd.models.qwen35.hf_config import hf_vision_config

        impl = checked_transformer_impl(model, te_available)
        config = transformer_config(model, parallel, impl, init_weights)
        if impl == "transformer_engine":
            spec = te_block_spec(config, ps.get_pipeline_model_parallel_rank())
        else:
            per_stage = model.num_layers // parallel.pipeline_model_parallel_size
            first = ps.get_pipeline_model_parallel_rank() * per_stage
            stage_types = list(model.decoder.layer_types[first:first + per_stage])
            spec = TransformerBlockSubmodules(layer_specs=layer_specs(stage_types), layer_norm=ZeroCentredRMSNorm)
        super().__init__(model, config, impl, pre_process=pre_process, post_process=post_process,
                         vision_class=Qwen3_5VisionModel, vision_config=hf_vision_config(model), layer_spec=spec,
                         rotary_percent=model.decoder.partial_rotary)
        rotary_dim = int(model.head_dim * model.decoder.partial_rotary)
        self.language_model.rotary_pos_emb = InterleavedMRoPE(rotary_dim, model.rope_theta)


def build_model(model: ModelConfig, parallel: ParallelConfig, te_available: bool | None = None,
                init_weights: bool = True) -> Qwen35Model:
    from megatron.core import parallel_state as ps

    return place_stage(Qwen35Model(model, parallel, pre_process=ps.is_pipeline_first_stage(),
                                   post_process=ps.is_pipeline_last_stage(), te_available=te_available,
                                   init_weights=init_weights))
