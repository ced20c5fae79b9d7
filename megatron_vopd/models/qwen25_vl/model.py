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
from megatron.core.transformer.module import MegatronModule
from torch import Tensor

from megatron_vopd.config import ModelConfig, ParallelConfig
from megatron_vopd.models.masks import causal_padding_mask
from megatron_vopd.models.qwen25_vl.hf_config import hf_vision_config
from megatron_vopd.models.specs import checked_transformer_impl, common_settings, layer_spec


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


class Qwen25VLModel(MegatronModule):
    """One pipeline stage of Qwen2.5-VL: vision tower and embedding on the first stage, output layer
    on the last."""

    def __init__(self, model: ModelConfig, parallel: ParallelConfig, *, pre_process: bool = True,
                 post_process: bool = True, te_available: bool | None = None, init_weights: bool = True):
        from megatron.core.models.gpt import GPTModel
        from megatron.core.transformer.enums import ModelType

        impl = checked_transformer_impl(model, te_available)
        super().__init__(config=transformer_config(model, parallel, impl, init_weights))
        self.model_cfg, self.transformer_impl = model, impl
        self.model_type = ModelType.encoder_or_decoder
        self.pre_process, self.post_process = pre_process, post_process
        self.vision_model = None
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
        )

        self._logit_positions = None  # [B, S] bool: the positions the output layer computes (see forward)
        if post_process:
            self.language_model.output_layer.register_forward_pre_hook(self._select_positions)

    def _select_positions(self, output_layer, args):
        """Output-layer pre-hook: keep only the hidden states at ``self._logit_positions``, as ``[N, 1, H]``.
        With sequence parallelism the hidden states are gathered first (forward turns the layer's own
        gather off meanwhile, as Megatron's inference path does)."""
        if self._logit_positions is None:
            return None
        hidden = args[0]  # [S(/TP with sequence parallelism), B, H]
        if self.config.sequence_parallel:
            from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

            hidden = gather_from_sequence_parallel_region(hidden)
        return (hidden.transpose(0, 1)[self._logit_positions][:, None], *args[1:])  # batch-major rows

    @property
    def share_embeddings_and_output_weights(self) -> bool:
        """Megatron's finalize_model_grads asks the stage this to all-reduce tied embedding grads over PP."""
        return self.language_model.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        return self.language_model.shared_embedding_or_output_weight()

    def set_input_tensor(self, input_tensor):
        """Pipeline schedules hand the previous stage's activations in here."""
        self.language_model.set_input_tensor(input_tensor)

    def embed(self, input_ids: Tensor, pixel_values: Tensor | None, image_grid_thw: Tensor | None) -> Tensor:
        """Token embeddings ``[S, B, H]`` with the image-token rows replaced by vision features."""
        emb = self.language_model.embedding(input_ids=input_ids, position_ids=None)  # [S, B, H]
        if pixel_values is None:
            return emb
        image_mask = input_ids == self.model_cfg.image_token_id  # [B, S]
        features = self.vision_model(pixel_values.to(emb.dtype), grid_thw=image_grid_thw).pooler_output
        if int(image_mask.sum()) != features.shape[0]:
            raise ValueError(f"{int(image_mask.sum())} image tokens in input_ids but the vision tower "
                             f"produced {features.shape[0]} features for image_grid_thw={image_grid_thw.tolist()}")
        emb = emb.transpose(0, 1).masked_scatter(image_mask[..., None], features.to(emb.dtype))
        return emb.transpose(0, 1).contiguous()

    def forward(self, input_ids: Tensor, position_ids: Tensor, attention_mask: Tensor | None = None,
                pixel_values: Tensor | None = None, image_grid_thw: Tensor | None = None,
                logit_positions: Tensor | None = None) -> Tensor:
        """Logits ``[B, S, V/TP]`` (vocab-parallel) on the last stage; hidden states ``[S, B, H]`` on
        other stages.

        ``attention_mask`` is the ``[B, S]`` 0/1 padding mask (None: no padding). ``logit_positions``
        (``[B, S]`` bool) computes the output layer only there and returns ``[N, V/TP]`` logits, rows in
        batch-major order: the distillation loss needs the response positions only, and the output
        layer is the largest matmul of a small-hidden, 152k-vocabulary model."""
        decoder_input = self.embed(input_ids, pixel_values, image_grid_thw) if self.pre_process else None
        self._logit_positions = logit_positions.bool() if logit_positions is not None and self.post_process else None
        if self._logit_positions is not None and self.config.sequence_parallel:
            self.language_model.output_layer.sequence_parallel = False
        try:
            out = self.language_model(
                input_ids=None, position_ids=position_ids, attention_mask=causal_padding_mask(attention_mask),
                decoder_input=decoder_input)
        finally:
            if self._logit_positions is not None and self.config.sequence_parallel:
                self.language_model.output_layer.sequence_parallel = True
            self._logit_positions = None
        return out[0] if self.post_process and logit_positions is not None else out


def build_model(model: ModelConfig, parallel: ParallelConfig, te_available: bool | None = None,
                init_weights: bool = True) -> Qwen25VLModel:
    """The local pipeline stage of the model for the current Megatron parallel state.

    ``init_weights=False`` for a model whose weights are loaded next (conversion, checkpoints)."""
    from megatron.core import parallel_state as ps

    stage = Qwen25VLModel(model, parallel, pre_process=ps.is_pipeline_first_stage(),
                          post_process=ps.is_pipeline_last_stage(), te_available=te_available,
                          init_weights=init_weights)
    # Every parameter in params_dtype, as Megatron's Float16Module would leave it: the local spec's
    # torch RMSNorm creates fp32 weights, and Megatron's optimizers pair model and fp32 main
    # parameters per dtype buffer. Buffers (rotary inverse frequencies) keep their fp32.
    dtype = stage.config.params_dtype
    for p in stage.parameters():
        if p.dtype != dtype:
            p.data = p.data.to(dtype)
    # Megatron's layers are created on the current CUDA device already; the vision tower (a
    # transformers module) is created on the CPU and follows them here.
    return stage.cuda(torch.cuda.current_device()) if torch.cuda.is_available() else stage
