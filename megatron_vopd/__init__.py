"""megatron-vopd: Vision-OPD on-policy self-distillation of Qwen-VL models on Megatron-Core."""
