"""The student's optimiser: Megatron-Core's DDP and optimizer, and the learning-rate schedule.

One code path on GPUs and CPUs (the CPU path runs the same classes under gloo through the shims of
``runtime/cpu_shims.py``):

* ``DistributedDataParallel`` (megatron-core) wraps the model stage: gradients accumulate in a
  contiguous **fp32** buffer (``param.main_grad``, whatever the parameter dtype) and are summed over
  data parallelism in buckets (all-reduce, or reduce-scatter with the distributed optimizer),
  overlapped with the backward pass when ``optimizer.overlap_grad_reduce``. Losses are already
  normalised by the step's global token count, so the reduction sums (the model config sets
  ``calculate_per_token_loss``).
* ``get_megatron_optimizer``: AdamW (TE's FusedAdam on GPUs, ``CpuFusedAdam`` on CPUs) behind
  Megatron's mixed-precision wrapper. With bf16/fp16 parameters it keeps **fp32 master weights**
  (``Float16OptimizerWithFloat16Params``; with ``optimizer.distributed`` the ``DistributedOptimizer``,
  which also shards the masters and Adam moments over data parallelism): each step updates the
  masters from the fp32 main grads and writes the rounded values back into the model. fp32
  parameters are their own masters (``FP32Optimizer``). Gradient norm and clipping (over the model-
  parallel group, each parameter counted once) are Megatron's. No weight decay on biases and 1-D
  parameters (Megatron's convention). fp16 adds Megatron's dynamic loss scaler (bf16 needs none).

The learning rate is a pure function of the step (:func:`lr_at`), so resuming needs only the step.
"""

from __future__ import annotations

import math

import torch

from megatron_vopd.config import ConfigError, ModelConfig, OptimizerConfig

def fused_adam_source() -> str | None:
    """Where megatron-core takes its GPU FusedAdam from: "Transformer Engine", "apex" or None."""
    try:
        from transformer_engine.pytorch.optimizers import FusedAdam  # noqa: F401

        return "Transformer Engine"
    except Exception:  # ImportError, or a TE install that fails while loading its library
        pass
    try:
        from apex.optimizers import FusedAdam  # noqa: F401

        return "apex"
    except Exception:
        return None


def check_supported(cfg: OptimizerConfig, *, cuda: bool, fused_adam: str | None) -> None:
    """Refuses settings this machine cannot run, naming the key (ConfigError)."""
    if cfg.distributed and cuda and fused_adam is None:
        raise ConfigError(
            "optimizer.distributed=true on CUDA needs FusedAdam from Transformer Engine or apex (the GPU image has "
            "both): without them megatron-core falls back to torch's AdamW, whose per-parameter step the distributed "
            "optimizer cannot reload from its checkpoints; install Transformer Engine or set optimizer.distributed=false")


def describe(cfg: OptimizerConfig, params_dtype: str, *, cuda: bool, fused_adam: str | None = "Transformer Engine"
             ) -> dict[str, str]:
    """Which classes :class:`StudentOptimizer` builds for these settings, without building them."""
    if cfg.distributed:
        wrapper = "DistributedOptimizer"
    elif params_dtype == "float32":
        wrapper = "FP32Optimizer"
    else:
        wrapper = "Float16OptimizerWithFloat16Params"
    return {
        "ddp": "megatron.core DistributedDataParallel (fp32 main grads"
               + (", overlapped reduction)" if cfg.overlap_grad_reduce else ")"),
        "optimizer": wrapper,
        "masters": "the fp32 parameters themselves" if params_dtype == "float32" and not cfg.distributed
        else ("fp32, sharded over data parallelism" if cfg.distributed else "fp32, one copy per rank"),
        "adam": ("CpuFusedAdam (runtime/cpu_shims.py)" if not cuda else f"FusedAdam ({fused_adam})" if fused_adam
                 else "torch.optim.AdamW (megatron-core's fallback: neither Transformer Engine nor apex)"),
    }


def sum_partial_grads_over_tp(model) -> None:
    """Sum over tensor parallelism the fp32 main grads of replicated parameters applied to head-sharded
    activations (``TP_PARTIAL_GRAD``, e.g. Gated DeltaNet's per-head output norm), which Megatron's
    finalize_model_grads leaves partial (it sums only q/k norms and sequence-parallel norms)."""
    from megatron.core import parallel_state as ps

    if ps.get_tensor_model_parallel_world_size() == 1:
        return
    from megatron_vopd.models.specs import TP_PARTIAL_GRAD

    grads = [p.main_grad for p in model.parameters() if getattr(p, TP_PARTIAL_GRAD, False) and p.requires_grad]
    if grads:
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat, group=ps.get_tensor_model_parallel_group())
        for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)


class StudentOptimizer:
    """Megatron DDP around one model stage plus Megatron's optimizer over it.

    ``ddp`` is the module to run forward/backward through (it owns the fp32 grad buffers; its
    ``module`` is the stage); call :meth:`zero_grad` before a step's backward passes and :meth:`step`
    after them."""

    def __init__(self, model: torch.nn.Module, cfg: OptimizerConfig, model_cfg: ModelConfig):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
        from megatron.core.optimizer import get_megatron_optimizer

        cuda = torch.cuda.is_available()
        fused_adam = fused_adam_source() if cuda else None
        check_supported(cfg, cuda=cuda, fused_adam=fused_adam)
        self.description = describe(cfg, model_cfg.params_dtype, cuda=cuda, fused_adam=fused_adam)
        dtype = model.config.params_dtype  # the TransformerConfig's torch dtype of model.params_dtype
        wrong = sorted({str(p.dtype) for p in model.parameters() if p.dtype != dtype})
        if wrong:  # Megatron's optimizers pair model and main parameters per dtype buffer
            raise ValueError(f"model.params_dtype={model_cfg.params_dtype!r} but the model has {', '.join(wrong)} "
                             "parameters: build it with models.*.build_model")
        self.cfg, self.model_cfg = cfg, model_cfg
        ddp_cfg = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=cfg.overlap_grad_reduce,
            use_distributed_optimizer=cfg.distributed, bucket_size=cfg.grad_bucket_size,
            # bf16/fp32: a non-finite gradient is a bug, stop there; fp16: overflows are the loss scaler's
            # business (it skips the step and lowers the scale)
            check_for_nan_in_grad=dtype != torch.float16)
        self.ddp = DistributedDataParallel(model.config, ddp_cfg, model)
        self.megatron = get_megatron_optimizer(MegatronOptimizerConfig(
            optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
            adam_beta1=cfg.betas[0], adam_beta2=cfg.betas[1], adam_eps=cfg.eps, clip_grad=cfg.clip_grad,
            bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, params_dtype=dtype,
            use_distributed_optimizer=cfg.distributed, decoupled_weight_decay=True,
            initial_loss_scale=2.0**16), [self.ddp])  # fp16 only: dynamic loss scaling from 65536 (apex's start)
        if dtype == torch.float16:  # the schedules multiply each loss by the dynamic loss scale
            model.config.grad_scale_func = self.megatron.scale_loss
        self.wrappers = list(getattr(self.megatron, "chained_optimizers", [self.megatron]))  # Megatron's, per group
        if dtype != torch.float32 and any(type(o).__name__ == "FP32Optimizer" for o in self.wrappers):
            raise RuntimeError(f"{model_cfg.params_dtype} parameters got an optimizer without master weights")

    @property
    def per_parameter_step(self) -> bool:
        """True for torch's AdamW (megatron-core's fallback without TE/apex on CUDA): its step count is
        kept per parameter, FusedAdam's in the parameter groups."""
        return any(isinstance(o.optimizer, (torch.optim.Adam, torch.optim.AdamW)) for o in self.wrappers)

    @property
    def model(self) -> torch.nn.Module:
        """The model stage (unwrapped)."""
        return self.ddp.module

    def zero_grad(self) -> None:
        self.ddp.zero_grad_buffer()
        self.megatron.zero_grad()

    def step(self, step: int) -> dict[str, float]:
        """Finish the gradient reduction (DP; tied embeddings across PP; sequence-parallel norms),
        then one AdamW step at ``lr_at(step)`` with clipping; ``{"lr", "grad_norm"}``.
        Non-finite bf16/fp32 gradients raise in the reduction (DDP's check_for_nan_in_grad); with fp16 the
        dynamic loss scaler skips the step (``"skipped": 1.0``) and lowers the scale."""
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads([self.ddp])
        sum_partial_grads_over_tp(self.model)
        lr = lr_at(step, self.cfg)
        for group in self.megatron.param_groups:
            group["lr"] = lr
        ok, grad_norm, _ = self.megatron.step()
        if not ok:  # fp16: the loss scaler found inf/nan and lowered the scale
            return {"lr": lr, "grad_norm": float("nan"), "skipped": 1.0}
        return {"lr": lr, "grad_norm": float(grad_norm)}

    def sharded_state_dict(self, model_sharded_state_dict: dict, *, is_loading: bool = False) -> dict:
        """The optimizer state for dist_checkpointing, in model space (fp32 masters as
        ``optimizer.state.fp32_param.<key>``, moments as ``optimizer.state.exp_avg[_sq].<key>``):
        loadable at any TP/PP/DP layout."""
        return self.megatron.sharded_state_dict(model_sharded_state_dict, is_loading=is_loading,
                                                metadata={"distrib_optim_sharding_type": "fully_reshardable"})

    def load_state_dict(self, state: dict) -> None:
        self.megatron.load_state_dict(state)


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig, model_cfg: ModelConfig) -> StudentOptimizer:
    return StudentOptimizer(model, cfg, model_cfg)


def lr_at(step: int, cfg: OptimizerConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up over ``warmup_steps``
    (step 0 gets lr/warmup), then constant, or cosine to ``min_lr`` at ``train_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.train_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
