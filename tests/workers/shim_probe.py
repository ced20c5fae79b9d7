"""Probe one CPU shim: with every other shim applied, run the workload that needs it (expecting
the failure), then apply it and run the workload again (expecting success). Prints RESULT JSON."""

import json
import os
import sys

import torch
import torch.distributed as dist

from megatron_vopd.runtime import cpu_shims
from megatron_vopd.runtime.distributed import _free_port


def start_world_of_one():
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(1, 1)


def seed():
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        return torch.rand(3)


def tiny_gpt(dtype="float32"):
    from megatron_vopd.config import ParallelConfig, load_model_config
    from megatron_vopd.models.qwen25_vl.model import Qwen25VLModel

    cfg = load_model_config("tiny-qwen2.5-vl")
    cfg.transformer_impl, cfg.params_dtype = "local", dtype
    model = Qwen25VLModel(cfg, ParallelConfig())
    for p in model.parameters():  # as build_model does
        p.data = p.data.to(model.config.params_dtype)
    return model


def megatron_optimizer(distributed: bool):
    """Megatron DDP + get_megatron_optimizer over the bf16 tiny model, after one step."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    model = tiny_gpt("bfloat16")
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=distributed), model)
    opt = get_megatron_optimizer(OptimizerConfig(lr=1e-3, bf16=True, params_dtype=torch.bfloat16,
                                                 use_distributed_optimizer=distributed), [ddp])
    ids = torch.randint(0, 1000, (1, 8))
    ddp(ids, torch.arange(8).expand(3, 1, 8)).float().square().mean().backward()
    ddp.finish_grad_sync()
    opt.step()
    return model, opt


def mixed_precision_optimizer():
    return type(megatron_optimizer(False)[1].chained_optimizers[0]).__name__


def distributed_optimizer_reload():
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject, ShardedBase

    model, opt = megatron_optimizer(True)
    state = opt.sharded_state_dict(model.sharded_state_dict(), metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    plain = dict_list_map_inplace(lambda v: v.data if isinstance(v, ShardedBase) else
                                  v.unwrap() if isinstance(v, LocalNonpersistentObject) else v, state)
    opt.load_state_dict(plain)  # the checkpoint path: fully reshardable state back into the shards
    return "reloaded"


def build():
    return sum(p.numel() for p in tiny_gpt().parameters())


def forward():
    from megatron.core.transformer.utils import get_default_causal_mask

    get_default_causal_mask.cache_clear() if hasattr(get_default_causal_mask, "cache_clear") else None
    model = tiny_gpt()
    ids = torch.randint(0, 1000, (1, 8))
    return model(ids, torch.arange(8).expand(3, 1, 8)).shape


def p2p_sync():
    import inspect

    from megatron.core.pipeline_parallel import p2p_communication

    assert "torch.cuda.synchronize()" in inspect.getsource(p2p_communication)  # the call site needing it
    torch.cuda.synchronize()
    torch.cuda.current_stream().wait_stream(None)
    return "ok"


def gated_delta_net():
    """megatron-core's GatedDeltaNet with a local spec equals transformers' Qwen3_5GatedDeltaNet (same weights)."""
    import torch.nn.functional as F
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet, GatedDeltaNetSubmodules
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from transformers import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    heads = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                 linear_conv_kernel_dim=4)
    cfg = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, normalization="RMSNorm",
                            activation_func=F.silu, layernorm_epsilon=1e-6, use_cpu_initialization=True,
                            hidden_dropout=0.0, attention_dropout=0.0, gradient_accumulation_fusion=False, **heads)
    ours = GatedDeltaNet(cfg, GatedDeltaNetSubmodules(in_proj=ColumnParallelLinear, out_norm=WrappedTorchNorm,
                                                      out_proj=RowParallelLinear),
                         layer_number=1, pg_collection=ProcessGroupCollection.use_mpu_process_groups(["tp", "cp"]))
    ref = Qwen3_5GatedDeltaNet(Qwen3_5TextConfig(hidden_size=64, rms_norm_eps=1e-6, layer_types=["linear_attention"],
                                                 num_hidden_layers=1, **heads), layer_idx=0)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
        ours.in_proj.weight.copy_(torch.cat([ref.in_proj_qkv.weight, ref.in_proj_z.weight, ref.in_proj_b.weight,
                                             ref.in_proj_a.weight]))
        for name in ("conv1d.weight", "A_log", "dt_bias", "out_proj.weight"):
            ours.get_parameter(name).copy_(ref.get_parameter(name))
        ours.out_norm.weight.copy_(ref.norm.weight)
        x = torch.randn(2, 70, 64)  # batch, seq (more than one 64-token chunk), hidden
        got = ours(x.transpose(0, 1).contiguous(), None)[0].transpose(0, 1)
        diff = (got - ref(x)).abs().max().item()
    if diff > 1e-5:
        raise AssertionError(f"GatedDeltaNet differs from transformers' by {diff}")
    return f"max_abs_diff={diff:.1e}"


def recomputed_backward():
    """Full activation recompute (model.recompute) gives the gradients of the plain backward."""
    from megatron.core.transformer.utils import get_default_causal_mask

    get_default_causal_mask.cache_clear() if hasattr(get_default_causal_mask, "cache_clear") else None
    ids, pos = torch.randint(0, 1000, (1, 8)), torch.arange(8).expand(3, 1, 8)
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = tiny_gpt()
        if recompute:
            model.config.recompute_granularity, model.config.recompute_method = "full", "uniform"
            model.config.recompute_num_layers = 1
        model.train()
        model(ids, pos).float().square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    diff = (grads[0] - grads[1]).abs().max().item()
    if diff > 1e-6:
        raise AssertionError(f"recomputed gradients differ by {diff}")
    return f"max_abs_diff={diff:.1e}"


WORKLOADS = {
    "cpu_rng_tracker": seed,
    "current_device_is_cpu": build,
    "cuda_tensors_on_cpu": forward,
    "cuda_sync_and_streams": p2p_sync,
    "cuda_tensor_type_names": mixed_precision_optimizer,
    "fused_adam": distributed_optimizer_reload,
    "fla_gated_delta_rule": gated_delta_net,
    "recompute_rng": recomputed_backward,
}


def main(name):
    start_world_of_one()
    others = [n for n in cpu_shims.SHIM_NAMES if n != name]
    cpu_shims.apply_cpu_shims(others)
    if name != "cpu_rng_tracker":
        seed()
    try:
        WORKLOADS[name]()
        without = None
    except Exception as e:  # noqa: BLE001 - the failure is what we report
        without = f"{type(e).__name__}: {e}"[:300]
    cpu_shims.apply_cpu_shims([name])
    if name != "cpu_rng_tracker":
        seed()
    with_shim = str(WORKLOADS[name]())
    print("RESULT " + json.dumps({"shim": name, "error_without": without, "with": with_shim}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
