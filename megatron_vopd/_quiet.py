"""Library warnings that say nothing a user of this project can act on, silenced by their exact text
(everything else still shows). Installed when ``megatron_vopd`` is imported, so in every process: the
CLI, the torchrun workers and the vLLM engine children.

- megatron-core's notes that Transformer Engine / apex are absent (this project picks the layer
  implementation itself and says so: ``model.transformer_impl``, ``vopd plan``, tools/gpu_check.sh);
- megatron-core's own default ``cuda_graph_scope`` deprecation and its inference module's import note;
- torch's ShardedTensor and ``load_state_dict`` deprecations, raised inside megatron-core's checkpointing;
- vLLM's use of ``torch.distributed.reduce_op``.
"""

from __future__ import annotations

import warnings

NOISE = (
    (UserWarning, r"Transformer Engine and Apex are not installed"),
    (UserWarning, r"Apex is not installed\. Falling back to Torch Norm"),
    (UserWarning, r"full scope is deprecated\. Use empty cuda_graph_scope"),
    (DeprecationWarning, r"The following imports from `dynamic_context\.py` will be removed"),
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),
    (FutureWarning, r"`torch\.distributed\.reduce_op` is deprecated"),
    (FutureWarning, r"`load_state_dict` is deprecated and will be removed in future versions"),
)


def silence_library_noise() -> None:
    for category, message in NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
