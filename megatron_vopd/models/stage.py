"""The pipeline-stage plumbing every vision-language family shares: a replicated vision tower whose
features replace the image-token embeddings, a Megatron-Core ``GPTModel`` decoder, response-only logits.

A family's stage subclasses ``VisionLanguageStage`` and hands it its TransformerConfig, layer spec and
vision tower: the stage builds the tower (transformers' own module, first stage only, replicated over
TP) and the ``GPTModel`` decoder (with ``scatter_embedding_sequence_parallel=False``: the image features
are merged into the full-sequence embeddings first, then scattered). Families with more than merged
features (Qwen3-VL's deepstack) override ``vision_features``, ``decoder_kwargs`` and ``stage_output``.

Inputs are batch-first token ids ``[B, S]``; the image features replace the image-token embeddings
in batch-major order; position ids are ``[3, B, S]`` (``mrope.py``).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule
from torch import Tensor

from megatron_vopd.models.masks import causal_padding_mask


class VisionLanguageStage(MegatronModule):
    """One pipeline stage: vision tower and embedding on the first stage, output layer on the last.

    ``vision_class`` is transformers' tower module and ``vision_config`` its config; ``layer_spec`` the
    decoder's layer spec (or block spec); ``rotary_percent`` the rotated share of the head dim."""

    def __init__(self, model, config, impl: str, *, pre_process: bool, post_process: bool, vision_class,
                 vision_config, layer_spec, rotary_percent: float = 1.0):
        from megatron.core.models.gpt import GPTModel
        from megatron.core.transformer.enums import ModelType

        super().__init__(config=config)
        self.model_cfg, self.transformer_impl = model, impl
        self.model_type = ModelType.encoder_or_decoder
        self.pre_process, self.post_process = pre_process, post_process
        self.vision_model = None  # first stage only
        if pre_process:
            vision_config._attn_implementation = "sdpa" if torch.cuda.is_available() else "eager"
            self.vision_model = vision_class._from_config(vision_config, dtype=config.params_dtype)
        self.language_model = GPTModel(
            config=config,
            transformer_layer_spec=layer_spec,
            vocab_size=model.vocab_size,
            max_sequence_length=model.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=model.tie_word_embeddings,
            position_embedding_type="mrope",
            rotary_percent=rotary_percent,
            rotary_base=int(model.rope_theta),
            scatter_embedding_sequence_parallel=False,  # image features are merged first (embed)
        )
        self._logit_positions = None  # [B, S] bool while a forward runs: see forward
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

    def vision_features(self, pixel_values: Tensor, image_grid_thw: Tensor, dtype: torch.dtype):
        """(merged features ``[N, H]``, family extras) of the vision tower for the images of a micro-batch."""
        return self.vision_model(pixel_values.to(dtype), grid_thw=image_grid_thw).pooler_output, None

    def to_sequence_parallel(self, hidden: Tensor) -> Tensor:
        """``[S, B, H]`` -> this rank's ``[S/TP, B, H]`` slice with sequence parallelism (else unchanged)."""
        if not self.config.sequence_parallel:
            return hidden
        from megatron.core.tensor_parallel import scatter_to_sequence_parallel_region

        return scatter_to_sequence_parallel_region(hidden)

    def embed(self, input_ids: Tensor, pixel_values: Tensor | None, image_grid_thw: Tensor | None,
              vision_grid_thw: Tensor | None = None, image_source: Tensor | None = None):
        """(token embeddings ``[S(/TP), B, H]`` with the image-token rows replaced by vision features,
        the family's extras of ``vision_features``). With ``image_source`` the patches are those of the
        unique images (grids ``vision_grid_thw``), encoded once and repeated per sequence."""
        emb = self.language_model.embedding(input_ids=input_ids, position_ids=None)  # [S, B, H], not scattered
        if pixel_values is None:
            return self.to_sequence_parallel(emb), None
        image_mask = input_ids == self.model_cfg.image_token_id  # [B, S]
        if image_source is None:
            features, extras = self.vision_features(pixel_values, image_grid_thw, emb.dtype)
        else:
            features, extras = self.vision_features(pixel_values, vision_grid_thw, emb.dtype)
            merge = self.model_cfg.vision.spatial_merge_size
            features = expand_images(features, vision_grid_thw, image_source, merge)
            if extras is not None:  # per-image feature lists (deepstack)
                extras = [expand_images(e, vision_grid_thw, image_source, merge) for e in extras]
        if int(image_mask.sum()) != features.shape[0]:
            raise ValueError(f"{int(image_mask.sum())} image tokens in input_ids but the vision tower "
                             f"produced {features.shape[0]} features for image_grid_thw={image_grid_thw.tolist()}")
        emb = emb.transpose(0, 1).masked_scatter(image_mask[..., None], features.to(emb.dtype))
        return self.to_sequence_parallel(emb.transpose(0, 1).contiguous()), extras

    def decoder_kwargs(self, input_ids: Tensor, extras) -> dict:
        """Extra keyword arguments of the decoder block (none for a plain decoder)."""
        return {}

    def stage_output(self, out: Tensor) -> Tensor:
        """What a non-last stage hands to the next one (its hidden states)."""
        return out

    def forward(self, input_ids: Tensor, position_ids: Tensor, attention_mask: Tensor | None = None,
                pixel_values: Tensor | None = None, image_grid_thw: Tensor | None = None,
                logit_positions: Tensor | None = None, vision_grid_thw: Tensor | None = None,
                image_source: Tensor | None = None) -> Tensor:
        """Logits ``[B, S, V/TP]`` (vocab-parallel) on the last stage; hidden states ``[S, B, H]`` on
        other stages.

        ``attention_mask`` is the ``[B, S]`` 0/1 padding mask (None: no padding). ``logit_positions``
        (``[B, S]`` bool) computes the output layer only there and returns ``[N, V/TP]`` logits, rows in
        batch-major order: the distillation loss needs the response positions only, and the output
        layer is the largest matmul of a small-hidden, 152k-vocabulary model. ``vision_grid_thw`` and
        ``image_source``: one vision pass per prompt (``train.sequences``)."""
        decoder_input, extras = (self.embed(input_ids, pixel_values, image_grid_thw, vision_grid_thw, image_source)
                                 if self.pre_process else (None, None))
        self._logit_positions = logit_positions.bool() if logit_positions is not None and self.post_process else None
        if self._logit_positions is not None and self.config.sequence_parallel:
            self.language_model.output_layer.sequence_parallel = False
        try:
            out = self.language_model(
                input_ids=None, position_ids=position_ids, attention_mask=causal_padding_mask(attention_mask),
                decoder_input=decoder_input, extra_block_kwargs=self.decoder_kwargs(input_ids, extras) or None)
        finally:
            if self._logit_positions is not None and self.config.sequence_parallel:
                self.language_model.output_layer.sequence_parallel = True
            self._logit_positions = None
        if not self.post_process:
            return self.stage_output(out)
        # squeeze, not out[0]: the backward of a select allocates and zero-fills the whole [1, N, V] gradient
        return out.squeeze(0) if logit_positions is not None else out


def place_stage(stage: VisionLanguageStage) -> VisionLanguageStage:
    """Every parameter in params_dtype, as Megatron's Float16Module would leave it (the local spec's torch
    RMSNorm creates fp32 weights, and Megatron's optimizers pair model and fp32 main parameters per dtype
    buffer; buffers such as rotary inverse frequencies keep their fp32); then on the current CUDA device
    (Megatron's layers are created there already; the vision tower, a transformers module, follows)."""
    dtype = stage.config.params_dtype
    for p in stage.parameters():
        if p.dtype != dtype:
            p.data = p.data.to(dtype)
    return stage.cuda(torch.cuda.current_device()) if torch.cuda.is_available() else stage


def expand_images(per_image: Tensor, vision_grid_thw: Tensor, image_source: Tensor, merge: int) -> Tensor:
    """The rows of the unique images' ``per_image`` (patches: ``merge=1``; merged features: the spatial merge
    size) repeated for every image of every sequence, in ``image_source`` order."""
    blocks = per_image.split((vision_grid_thw.prod(-1) // merge**2).tolist())
    return torch.cat([blocks[i] for i in image_source.tolist()])
