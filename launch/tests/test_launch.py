"""The NeMo-Run launcher, run in .venv-launcher: the local executor end to end (2 CPU processes), the slurm
and docker dry-runs, and bad input refused before anything is submitted."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/megatron-vopd:0.1.0-gpu"


def launch(tmp_path, *args, timeout=120):
    env = {**os.environ, "NEMORUN_HOME": str(tmp_path / "nemo_run"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "launch.run", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_local_executor_runs_the_tiny_demo_with_two_processes(tmp_path):
    out = tmp_path / "demo"
    res = launch(tmp_path, "--recipe", "demo", "--executor", "local", "--out", str(out), "--scenes", "16",
                 "--eval-scenes", "8", "optimizer.train_steps=2", "data.prompts_per_step=2", "rollout.n_samples=2",
                 timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    assert re.search(r"\[launch\] data-train: SUCCEEDED, data-eval: SUCCEEDED, "
                     r"warmup: SUCCEEDED, opd: SUCCEEDED", log), log[-3000:]
    # both training stages ran as 2 torchrun processes at TP2 (the demo's layout on 2 processes)
    assert "crop_sft: steps 1..2, 2 prompts/step, world 2 (TP2 PP1 DP1)" in log
    assert "vision_opd: steps 1..2, 2 prompts/step x 2 samples, world 2 (TP2 PP1 DP1)" in log
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 16
    assert len((out / "data" / "eval.jsonl").read_text().splitlines()) == 8
    assert (out / "warmup" / "latest").read_text().strip() == "iter_0000002"
    # Vision-OPD started from the warm-up's checkpoint, trained 2 steps, evaluated before and after
    assert (out / "opd" / "latest").read_text().strip() == "iter_0000002"
    evals = json.loads((out / "opd" / "eval.json").read_text())
    assert [e["step"] for e in evals] == [0, 2] and all(e["n"] == 8 for e in evals)
    steps = [json.loads(line)["step"] for line in (out / "opd" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_slurm_dryrun_has_torchrun_nodes_gpus_image_mounts_and_env(tmp_path):
    res = launch(tmp_path, "--recipe", "qwen2.5-vl-7b", "--executor", "slurm", "--nodes", "2", "--gpus-per-node", "8",
                 "--image", IMAGE, "--account", "vopd-acc", "--partition", "batch", "--time", "06:00:00",
                 "--mount", "/lustre/data:/data", "--mount", "/lustre/ckpt:/checkpoints", "--env", "HF_HOME=/data/hf",
                 "--job-dir", str(tmp_path / "jobs"), "data.train_file=/data/train.parquet",
                 "checkpoint.dir=/checkpoints/7b", "checkpoint.load=/checkpoints/base", "--dryrun")
    assert res.returncode == 0, res.stderr[-4000:]
    sbatch = res.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --account=vopd-acc", "#SBATCH --partition=batch", "#SBATCH --time=06:00:00",
                 "#SBATCH --exclusive", "#SBATCH --job-name=vopd.train", "export HF_HOME=/data/hf", "export CUDA_DEVICE_MAX_CONNECTIONS=1",
                 "export TORCH_NCCL_AVOID_RECORD_STREAMS=1"):
        assert line in sbatch, line
    srun = next(line for line in sbatch.splitlines() if line.startswith("srun") and "torchrun" in line)
    assert f"--container-image {IMAGE}" in srun
    assert re.search(r"--container-mounts /lustre/data:/data,/lustre/ckpt:/checkpoints,\S+:/nemo_run", srun), srun
    assert "--container-workdir /nemo_run/code" in srun
    torchrun = srun[srun.index("torchrun"):].split()
    assert torchrun[torchrun.index("--nnodes") + 1] == "2"
    assert torchrun[torchrun.index("--nproc-per-node") + 1] == "8"
    assert torchrun[torchrun.index("--rdzv-endpoint") + 1] == "$head_node_ip:29500"
    assert torchrun[torchrun.index("--node-rank") + 1] == "$SLURM_NODEID"
    assert torchrun[torchrun.index("-m"):] == ["-m", "megatron_vopd.train.trainer", "configs/scaleout/qwen2.5-vl-7b.yaml",
                                               "data.train_file=/data/train.parquet", "checkpoint.dir=/checkpoints/7b",
                                               "checkpoint.load=/checkpoints/base"]


def test_docker_dryrun_has_torchrun_gpus_image_mounts_and_env(tmp_path):
    res = launch(tmp_path, "--recipe", "qwen2.5-vl-3b", "--executor", "docker", "--gpus-per-node", "8",
                 "--image", IMAGE, "--mount", "/data:/data", "--env", "WANDB_API_KEY=k", "logging.wandb_project=vopd",
                 "--warn-only", "--dryrun")  # the recipe's placeholder paths: warned about, not refused
    assert res.returncode == 0, res.stderr[-4000:]
    assert "warning: stage 'train': data.train_file=data/vision_opd_6k/train.parquet is relative" in res.stderr
    assert "warning: stage 'train': checkpoint.load is null" in res.stderr
    assert "docker network create nemo_run" in res.stdout  # the printed commands run as they are
    run = res.stdout[res.stdout.index("docker run"):]
    for flag in ("--runtime nvidia", "--gpus 8", "--ipc host", "--shm-size 16g", "--ulimit memlock=-1",
                 "-v /data:/data", "-e WANDB_API_KEY=k", "-e CUDA_DEVICE_MAX_CONNECTIONS=1", "-w /nemo_run/code",
                 IMAGE):
        assert flag in run, flag
    assert re.search(r"-v \S+:/nemo_run ", run)
    cmd = run[run.index("torchrun"):].split()
    assert cmd[cmd.index("--nnodes") + 1] == "1" and cmd[cmd.index("--nproc-per-node") + 1] == "8"
    assert cmd[cmd.index("-m"):] == ["-m", "megatron_vopd.train.trainer", "configs/scaleout/qwen2.5-vl-3b.yaml",
                                     "logging.wandb_project=vopd"]


def test_cluster_runs_refuse_relative_paths_random_weights_and_a_laptop_job_dir(tmp_path):
    res = launch(tmp_path, "--recipe", "qwen2.5-vl-7b", "--executor", "slurm", "--image", IMAGE, "--account", "a",
                 "--job-dir", str(tmp_path / "jobs"), "--dryrun")
    assert res.returncode == 2
    for problem in ("data.train_file=data/vision_opd_6k/train.parquet is relative", "checkpoint.dir=checkpoints/"
                    "qwen2.5-vl-7b is relative", "checkpoint.load is null: the run would start from random weights",
                    "--warn-only submits anyway"):
        assert problem in res.stderr, problem
    res = launch(tmp_path, "--recipe", "qwen2.5-vl-7b", "--executor", "slurm", "--image", IMAGE, "--account", "a",
                 "--ssh-host", "login.example.org", "--dryrun")
    assert res.returncode == 2 and "--ssh-host needs --job-dir: a folder on the cluster" in res.stderr


def test_local_dryrun_lists_the_demo_stages_in_the_runtime_env(tmp_path):
    res = launch(tmp_path, "--recipe", "demo", "--executor", "local", "--out", "o", "--dry-run")  # or --dryrun
    assert res.returncode == 0, res.stderr[-4000:]
    assert re.findall(r"===== stage (\S+) \(local\)", res.stdout) == ["data-train", "data-eval", "warmup", "opd"]
    commands = [line for line in res.stdout.splitlines() if line.startswith("command: ")]
    assert commands[0] == ("command: python -m megatron_vopd.cli data synth --out o/data --size 224 "
                           "--answer-format color --n 1024")
    assert "--nnodes 1 --nproc-per-node 2" in commands[2] and "configs/demo-warmup.yaml" in commands[2]
    assert "checkpoint.load=o/warmup" in commands[3] and "parallel.tensor_model_parallel_size=2" in commands[3]
    assert f"PATH={REPO}/.venv/bin" in res.stdout
    assert not (tmp_path / "nemo_run").exists()  # a dry run leaves no experiment record behind


@pytest.mark.parametrize("args, message", [
    (["--recipe", "qwen9", "--executor", "local"], "--recipe 'qwen9' is not a launch recipe"),
    (["--recipe", "qwen2.5-vl-7b", "--executor", "slurm", "--image", IMAGE], "--executor slurm needs --account"),
    (["--recipe", "qwen2.5-vl-7b", "--executor", "docker"], "--executor docker needs --image"),
    (["--recipe", "qwen2.5-vl-7b", "--executor", "docker", "--image", IMAGE, "--nodes", "2"], "--nodes must be 1"),
    (["--recipe", "qwen2.5-vl-7b", "--executor", "slurm", "--image", IMAGE, "--account", "a", "--mount", "/data"],
     "--mount '/data': expected SRC:DST"),
    # 32B is TP8 x PP2: 8 GPUs cannot hold one model replica
    (["--recipe", "qwen2.5-vl-32b", "--executor", "slurm", "--image", IMAGE, "--account", "a", "--nodes", "1"],
     "stage 'train' (configs/scaleout/qwen2.5-vl-32b.yaml)"),
    (["--recipe", "qwen2.5-vl-7b", "--executor", "docker", "--image", IMAGE, "optimizer.lr=fast"], "optimizer.lr"),
    (["--recipe", "qwen2.5-vl-7b", "--executor", "docker", "--image", IMAGE, "optimizer.no_such_key=1"],
     "optimizer.no_such_key"),
])
def test_bad_input_is_refused_before_anything_runs(tmp_path, args, message):
    res = launch(tmp_path, *args, "--dryrun")
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr, res.stderr
    assert not (tmp_path / "nemo_run").exists()  # no experiment was created
