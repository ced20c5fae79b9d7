"""Process groups, Megatron parallel state, seeding, and the CPU shims (applied only without CUDA)."""

from megatron_vopd.runtime.distributed import (ParallelInfo, destroy_distributed, init_distributed, log_rank0,
                                               parallel_info, seed_everything)

__all__ = ["ParallelInfo", "destroy_distributed", "init_distributed", "log_rank0", "parallel_info", "seed_everything"]
