"""megatron-vopd: Vision-OPD on-policy self-distillation of Qwen-VL models on Megatron-Core."""

from megatron_vopd._quiet import silence_library_noise

silence_library_noise()
