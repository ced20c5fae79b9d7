"""Launch recipes: what a named run executes, as a list of stages.

A stage is one NeMo-Run task: a ``python -m MODULE ARGS`` command, either one process (data
preparation) or distributed (``torchrun`` over nodes x processes per node: the trainer). Stages run
one after another. Trainer stages read a YAML recipe from ``configs/`` plus the command line's
``key=value`` overrides, which the launcher validates with megatron_vopd.config before anything is
submitted (megatron_vopd.config needs only PyYAML, so this runs in the torch-free launcher env).

Recipes:

- ``demo``: the tiny Qwen2.5-VL on synthetic scenes, as ``vopd demo`` does it, but distributed:
  synthetic data -> crop warm-up (configs/demo-warmup.yaml) -> Vision-OPD with vLLM rollouts and
  evaluation before/after (configs/demo.yaml), each training stage at TP = processes per node.
  Runs on CPU with the local executor (2 processes).
- ``qwen2.5-vl-3b`` / ``-7b`` / ``-32b`` / ``-72b``, ``qwen3.5-4b`` / ``-9b``, ``qwen3-vl-8b``: Vision-OPD at
  scale from configs/scaleout/,
  for H100 nodes (slurm or docker executor); their default node count is the one the recipe's
  layout (TP x PP) was planned for (``vopd plan --recipe NAME --nodes N``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_vopd.config import ConfigError, load_config, validate
from megatron_vopd.demo import EVAL_SCENES, EVAL_START, SIZE, TRAIN_SCENES

REPO = Path(__file__).resolve().parent.parent
TRAINER = "megatron_vopd.train.trainer"
CLI = "megatron_vopd.cli"


@dataclass(frozen=True)
class Stage:
    """One task of a run: ``python -m module *args`` (with torchrun when ``distributed``)."""

    name: str
    module: str
    args: tuple[str, ...]
    distributed: bool = False
    config: str | None = None  # the trainer's YAML recipe (also args[0]); overrides apply to it


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    nodes: int  # default --nodes
    gpus_per_node: int  # default --gpus-per-node (processes per node on the CPU)


SCALEOUT_NODES = {"qwen2.5-vl-3b": 1, "qwen2.5-vl-7b": 1, "qwen2.5-vl-32b": 4, "qwen2.5-vl-72b": 8,
                  "qwen3.5-4b": 1, "qwen3.5-9b": 1, "qwen3-vl-8b": 1}

RECIPES: dict[str, Recipe] = {
    "demo": Recipe("demo", "tiny Qwen2.5-VL on synthetic scenes: data -> crop warm-up -> Vision-OPD (CPU)",
                   nodes=1, gpus_per_node=2),
    **{name: Recipe(name, f"Vision-OPD at scale: configs/scaleout/{name}.yaml on H100 nodes",
                    nodes=nodes, gpus_per_node=8)
       for name, nodes in SCALEOUT_NODES.items()},
}

# The demo's data: as vopd demo (megatron_vopd/demo.py; torch-free at import).
DEMO_TRAIN_SCENES, DEMO_EVAL_SCENES, DEMO_SIZE = TRAIN_SCENES, EVAL_SCENES, SIZE


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"--recipe {name!r} is not a launch recipe; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def stages(recipe: Recipe, overrides: list[str], out: str, procs: int, scenes: int = DEMO_TRAIN_SCENES,
           eval_scenes: int = DEMO_EVAL_SCENES) -> list[Stage]:
    """The stages of ``recipe``, with ``overrides`` appended to every trainer stage.

    For the demo: ``out`` is its output folder (data, checkpoints, metrics), ``procs`` its processes
    per node, which become its tensor-parallel size, ``scenes`` / ``eval_scenes`` its data sizes."""
    if recipe.name == "demo":
        return _demo_stages(overrides, out, procs, scenes, eval_scenes)
    config = f"configs/scaleout/{recipe.name}.yaml"
    return [Stage("train", TRAINER, (config, *overrides), distributed=True, config=config)]


def _demo_stages(overrides: list[str], out: str, procs: int, scenes: int, eval_scenes: int) -> list[Stage]:
    data = f"{out}/data"
    synth = ("data", "synth", "--out", data, "--size", str(DEMO_SIZE), "--answer-format", "color")
    common = [f"data.train_file={data}/train.jsonl", f"data.eval_file={data}/eval.jsonl",
              f"parallel.tensor_model_parallel_size={procs}"]
    warmup = [*common, f"checkpoint.dir={out}/warmup"]  # metrics.jsonl (and the recipe's tensorboard): under it
    opd = [*common, f"checkpoint.dir={out}/opd", f"checkpoint.load={out}/warmup"]
    return [
        Stage("data-train", CLI, (*synth, "--n", str(scenes))),
        Stage("data-eval", CLI, (*synth, "--n", str(eval_scenes), "--jsonl-name", "eval.jsonl",
                                 "--start", str(EVAL_START))),
        Stage("warmup", TRAINER, ("configs/demo-warmup.yaml", *warmup, *overrides), distributed=True,
              config="configs/demo-warmup.yaml"),
        Stage("opd", TRAINER, ("configs/demo.yaml", *opd, *overrides), distributed=True, config="configs/demo.yaml"),
    ]


CLUSTER_PATHS = ("data.train_file", "data.eval_file", "data.image_root", "checkpoint.dir", "checkpoint.load")


def cluster_problems(run_stages: list[Stage]) -> list[str]:
    """What would silently go wrong on a cluster: relative paths (each job resolves them inside its own job
    folder, so data is not found and a resubmission never finds its checkpoints) and a null
    checkpoint.load (training from random weights)."""
    problems = []
    for stage in run_stages:
        if stage.config is None:
            continue
        cfg = load_config(REPO / stage.config, [a for a in stage.args[1:] if "=" in a])
        for key in CLUSTER_PATHS:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            if value and not str(value).startswith("/"):
                problems.append(f"stage {stage.name!r}: {key}={value} is relative: give the path on the cluster "
                                f"(e.g. {key}=/lustre/...)")
        if not cfg.checkpoint.load:
            problems.append(f"stage {stage.name!r}: checkpoint.load is null: the run would start from random weights "
                            "(set it to a checkpoint converted with vopd convert hf-to-megatron)")
    return problems


def check_stage_configs(run_stages: list[Stage], world_size: int, te_available: bool | None) -> None:
    """Loads and validates every trainer stage's recipe + overrides for ``world_size`` processes.

    Raises ConfigError naming the stage and the key, before anything is submitted."""
    for stage in run_stages:
        if stage.config is None:
            continue
        overrides = [a for a in stage.args[1:] if "=" in a]
        try:
            cfg = load_config(REPO / stage.config, overrides)
            validate(cfg, world_size=world_size, te_available=te_available)
        except ConfigError as e:
            raise ConfigError(f"stage {stage.name!r} ({stage.config}): {e}") from None
