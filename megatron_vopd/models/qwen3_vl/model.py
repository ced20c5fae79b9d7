"""Qwen3-VL on Megatron-Core: a GPT decoder with q/k norms and interleaved mrope, and deepstack.

The decoder is a Megatron-Core ``GPTModel`` (RMSNorm, SwiGLU, GQA without bias, per-head q/k RMSNorm,
rotary over the whole head dim with the T/H/W sections INTERLEAVED: ``mrope.InterleavedMRoPE``). The
vision tower is transformers' own ``Qwen3VLVisionModel`` (16-px patches, learned position embedding, 2x2
merger, and one extra merger per ``vision.deepstack_visual_indexes`` block), replicated on every TP rank
of the first pipeline stage as for the other families: it is small next to the decoder, its parameter
names stay the checkpoint's, and a native Megatron tower would add a second vision implementation to
keep equal to transformers' for no saving at these sizes.

Deepstack: the merged features of the k-th listed vision block are ADDED to the image positions of the
hidden states after decoder layer k (k = 0, 1, 2 for the published models), as transformers does. The
first stage scatters each into a dense ``[S, B, H]`` tensor (zeros at text positions; sequence-parallel
slices with sequence parallelism) and hands the stack ``[n, S, B, H]`` to the decoder block as its
``context`` argument, which Megatron passes to every layer and, with activation recompute, saves and
replays with the layer's inputs. ``DeepstackLayer`` adds its row after the layer. When deepstack layers
lie on later pipeline stages, the rows they need travel with the hidden states: a stage sends
``[hidden; rows...]`` concatenated along the sequence dimension and the next one splits them again.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from megatron_vopd.config import ModelConfig, ParallelConfig
from megatron_vopd.models.mrope import InterleavedMRoPE
from megatron_vopd.models.specs import checked_transformer_impl, common_settings, decoder_settings
from megatron_vopd.models.stage import VisionLanguageStage, place_stage


def _deepstack_layer_class():
    from megatron.core.transformer.transformer_layer import TransformerLayer

    class DeepstackLayer(TransformerLayer):
        """A decoder layer that adds its deepstack row of ``context`` to its output (``deepstack_row``:
        the row of this stage's stack, None for layers after the deepstack ones)."""

        deepstack_row: int | None = None

        def forward(self, *args, **kwargs):
            out, context = super().forward(*args, **kwargs)
            if context is not None and self.deepstack_row is not None:
                out = out + context[self.deepstack_row]
            return out, context

    return DeepstackLayer


def layer_spec(impl: str):
    """The decoder layer spec: megatron-core's GPT layer with q/k norms (local or TE), as a ``DeepstackLayer``."""
    from megatron.core.models.gpt import gpt_layer_specs

    if impl == "transformer_engine":
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=True)
    return dataclasses.replace(spec, module=_deepstack_layer_class())


def transformer_config(model: ModelConfig, parallel: ParallelConfig, impl: str, init_weights: bool = True):
    """Megatron TransformerConfig of the Qwen3-VL decoder."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        **decoder_settings(model),
        add_qkv_bias=False,
        qk_layernorm=True,
        mrope_section=list(model.mrope_section),
        rotary_interleaved=False,
        **({"transformer_impl": "transformer_engine"} if impl == "transformer_engine" else {}),
        **common_settings(model, parallel, init_weights),
    )


class Qwen3VLModel(VisionLanguageStage):
    """One pipeline stage of Qwen3-VL (the plumbing: ``stage.VisionLanguageStage``), with deepstack."""

    def __init__(self, model: ModelConfig, parallel: ParallelConfig, *, pre_process: bool = True,
                 post_process: bool = True, te_available: bool | None = None, init_weights: bool = True):
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

        from megatron_vopd.models.qwen3_vl.hf_config import hf_vision_config

        impl = checked_transformer_impl(model, te_available)
        super().__init__(model, transformer_config(model, parallel, impl, init_weights), impl,
                         pre_process=pre_process, post_process=post_process, vision_class=Qwen3VLVisionModel,
                         vision_config=hf_vision_config(model), layer_spec=layer_spec(impl))
        self.language_model.rotary_pos_emb = InterleavedMRoPE(model.head_dim, model.rope_theta)

        # deepstack bookkeeping: this stage holds global layers [first, end); rows [first, n) of the stack
        # reach it, rows [end, n) leave it for the next stage
        layers = self.language_model.decoder.layers
        self.deepstack_layers = len(model.vision.deepstack_visual_indexes)
        self.first_layer = layers[0].layer_number - 1 if len(layers) else 0
        self.end_layer = self.first_layer + len(layers)
        for layer in layers:
            row = layer.layer_number - 1 - self.first_layer
            layer.deepstack_row = row if layer.layer_number - 1 < self.deepstack_layers else None
        self._deepstack = None  # the stack of this micro-batch: [rows, S(/TP), B, H]

    @property
    def rows_in(self) -> int:
        """Deepstack rows this stage receives (from the vision tower on the first stage, else the pipeline)."""
        return max(0, self.deepstack_layers - self.first_layer)

    @property
    def rows_out(self) -> int:
        """Deepstack rows this stage hands on to the next pipeline stage."""
        return 0 if self.post_process else max(0, self.deepstack_layers - self.end_layer)

    def vision_features(self, pixel_values: Tensor, image_grid_thw: Tensor, dtype: torch.dtype):
        out = self.vision_model(pixel_values.to(dtype), grid_thw=image_grid_thw)
        return out.pooler_output, out.deepstack_features

    def set_input_tensor(self, input_tensor):
        """Split what the previous stage sent into its hidden states and the deepstack rows for this stage."""
        tensor = input_tensor[0] if isinstance(input_tensor, list) else input_tensor
        if tensor is not None and not self.pre_process and self.rows_in:
            seq = tensor.shape[0] // (1 + self.rows_in)
            self._deepstack = tensor[seq:].view(self.rows_in, seq, *tensor.shape[1:])
            tensor = tensor[:seq]
        self.language_model.set_input_tensor(tensor)

    def decoder_kwargs(self, input_ids: Tensor, extras) -> dict:
        if self.pre_process:
            self._deepstack = None
            if extras is not None:  # dense rows: each deepstack feature at the image positions, zeros elsewhere
                mask = (input_ids == self.model_cfg.image_token_id)[..., None]  # [B, S, 1]
                zeros = torch.zeros(*input_ids.shape, self.config.hidden_size, dtype=self.config.params_dtype,
                                    device=input_ids.device)
                rows = [self.to_sequence_parallel(zeros.masked_scatter(mask, f.to(zeros.dtype)).transpose(0, 1))
                        for f in extras]
                self._deepstack = torch.stack(rows)
        stack = self._deepstack
        if not self.rows_out:
            self._deepstack = None  # nothing to hand on (the block keeps its own reference)
        return {"context": stack} if stack is not None else {}

    def stage_output(self, out: Tensor) -> Tensor:
        rows, stack = self.rows_out, self._deepstack
        self._deepstack = None
        if not rows:
            return out
        later = stack[-rows:] if stack is not None else out.new_zeros(rows, *out.shape)
        return torch.cat([out, later.reshape(-1, *out.shape[1:])])


def build_model(model: ModelConfig, parallel: ParallelConfig, te_available: bool | None = None,
                init_weights: bool = True) -> Qwen3VLModel:
    from megatron.core import parallel_state as ps

    return place_stage(Qwen3VLModel(model, parallel, pre_process=ps.is_pipeline_first_stage(),
                                    post_process=ps.is_pipeline_last_stage(), te_available=te_available,
                                    init_weights=init_weights))
