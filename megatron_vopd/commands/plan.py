"""``vopd plan --recipe NAME --nodes N``: per-GPU memory of a recipe's layout and of every layout that could run it.

Pure arithmetic (megatron_vopd/plan.py): no GPU, no torch. A recipe name resolves to
``configs/scaleout/NAME.yaml``; anything else is a path.
"""

from __future__ import annotations

import sys

from megatron_vopd.config import ConfigError, load_config, resolve_recipe


def register(sub) -> None:
    p = sub.add_parser("plan", help="per-GPU memory (weights, grads, optimizer, activations, teacher, vLLM KV cache) "
                                    "of a recipe and the (TP, PP) layouts that fit")
    p.add_argument("--recipe", required=True,
                   help="scale-out recipe name (configs/scaleout/NAME.yaml, e.g. qwen2.5-vl-7b) or a YAML path")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--gpu-gib", type=float, default=80, help="memory per GPU in GiB (default 80)")
    p.add_argument("overrides", nargs="*", help="key.sub=value applied to the recipe first, e.g. "
                   "rollout.gpu_memory_utilization=0.2 rollout.tensor_parallel_size=4")
    p.add_argument("--distributed-optimizer", action="store_true",
                   help="plan with Megatron's distributed optimizer (fp32 masters and AdamW moments sharded over "
                        "data parallelism) even where the recipe's optimizer.distributed is false")
    p.set_defaults(func=run)


def run(args) -> int:
    from megatron_vopd.plan import candidate_layouts, format_plan, format_table, memory_plan

    try:
        if args.nodes < 1 or args.gpus_per_node < 1 or args.gpu_gib <= 0:
            raise ConfigError(f"--nodes={args.nodes}, --gpus-per-node={args.gpus_per_node} and "
                              f"--gpu-gib={args.gpu_gib} must be positive")
        path = resolve_recipe(args.recipe)
        cfg = load_config(path, args.overrides)
        world = args.nodes * args.gpus_per_node
        distributed = args.distributed_optimizer or cfg.optimizer.distributed
        tp, pp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size
        own = None
        if world % (tp * pp) == 0:
            own = memory_plan(cfg, nodes=args.nodes, gpus_per_node=args.gpus_per_node, tp=tp, pp=pp,
                              gpu_gib=args.gpu_gib, distributed_optimizer=distributed)
        layouts = candidate_layouts(cfg, args.nodes, args.gpus_per_node, gpu_gib=args.gpu_gib,
                                    distributed_optimizer=distributed)
    except ConfigError as e:
        print(f"error: vopd plan --recipe {args.recipe}: {e}", file=sys.stderr)
        return 2
    print(f"recipe {args.recipe} ({path}), model {cfg.model.num_layers} layers x {cfg.model.hidden_size}")
    if own is not None:
        print(format_plan(own, name="recipe layout"))
    else:
        print(f"recipe layout TP={tp} x PP={pp} does not divide {world} GPUs ({args.nodes} x {args.gpus_per_node})")
    fitting = sum(p["fits"] for p in layouts)
    print(f"\ncandidate layouts on {args.nodes} x {args.gpus_per_node} GPUs ({fitting} of {len(layouts)} fit; "
          f"GiB per GPU, worst pipeline stage; optimizer "
          f"{'distributed over DP' if distributed else 'not distributed'}):")
    print(format_table(layouts))
    print("\n" + verdict(cfg, layouts, args))
    return 0 if fitting else 1  # nothing fits: the plan is a failure the caller (a script) must see


def verdict(cfg, layouts, args) -> str:
    """One line: does the recipe's batch fit this machine, with which layout, and how many rollout waves."""
    from megatron_vopd.plan import GIB

    d, r = cfg.data, cfg.rollout
    batch = (f"{d.prompts_per_step} prompts x {r.n_samples} samples = {d.prompts_per_step * r.n_samples} sequences "
             f"(prompts <= {d.max_prompt_length} tokens, answers <= {r.max_tokens})")
    machine = f"{args.nodes} x {args.gpus_per_node} x {args.gpu_gib:g} GiB"
    fitting = [p for p in layouts if p["fits"]]
    if not fitting:
        best = min(layouts, key=lambda p: p["training_total"] - p["training_budget"]) if layouts else None
        if best is None:
            why = ""
        elif best["training_fits"]:  # training fits somewhere: the rollout's share cannot hold one sequence
            why = (f"; at TP={best['tp']} PP={best['pp']} training fits but the vLLM share cannot hold one "
                   f"{r.max_model_len}-token sequence (raise rollout.gpu_memory_utilization or rollout.tensor_parallel_size)")
        else:
            why = (f"; the closest layout, TP={best['tp']} PP={best['pp']}, needs {best['training_total'] / GIB:.1f} GiB "
                   f"for training against {best['training_budget'] / GIB:.1f}")
        return f"=> {batch} does NOT fit on {machine}{why}"
    p = fitting[0]
    engines = p["engines"]
    at_once = engines * p["rollout_sequences"]
    waves = -(-d.prompts_per_step * r.n_samples // at_once)
    return (f"=> {batch} fits on {machine} with TP={p['tp']} PP={p['pp']} DP={p['dp']} (training "
            f"{p['training_total'] / GIB:.1f} of {p['training_budget'] / GIB:.1f} GiB per GPU); {engines} engines of "
            f"rollout TP={p['rollout_tp']} hold {at_once} full-length sequences at once: >= {waves} generation wave(s)")
