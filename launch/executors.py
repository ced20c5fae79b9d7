"""NeMo-Run executors for one stage of a run: local (this host), slurm (pyxis/enroot containers) or docker.

Where the code and the environment come from:

- local: the command runs on this host in the runtime virtualenv (``--runtime-venv``, default
  ``.venv``, built by ``make setup``), from the repository root; the code is the working tree.
- slurm / docker: the command runs in the container image (``--image``, built from docker/), which
  carries the dependencies; NeMo-Run's git packager ships the repository's committed HEAD with the
  job and the command runs from it (``/nemo_run/code``), so configs/ paths resolve there.

Every distributed stage goes through NeMo-Run's torchrun launcher: ``--nnodes N --nproc-per-node G``
with a c10d rendezvous on the first node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nemo_run as run

from launch.recipes import REPO, Stage

# Environment of every GPU task (slurm, docker). Documented in the README.
GPU_ENV = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # Megatron: keeps TP/SP communication ordered with compute
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",  # frees NCCL buffers on time (lower peak memory)
    "NCCL_NVLS_ENABLE": "0",  # NVLink SHARP buffers clash with colocated vLLM memory pools
    "PYTHONUNBUFFERED": "1",
}
DOCKER_SHM = "16g"  # dataloader and torch.distributed shared memory
DOCKER_ULIMITS = ["memlock:-1", "stack:67108864"]  # NGC's recommended limits for PyTorch containers


class LaunchError(ValueError):
    """A launch option that cannot work, naming the flag."""


@dataclass
class LaunchOptions:
    executor: str  # local | slurm | docker
    nodes: int
    gpus_per_node: int  # processes per node (GPUs; CPU processes for local)
    image: str = ""
    mounts: list[str] = field(default_factory=list)  # SRC:DST
    env: dict[str, str] = field(default_factory=dict)
    account: str = ""
    partition: str = ""
    time: str = "04:00:00"
    job_dir: str = ""  # slurm: where job files live on the cluster (LocalTunnel: here)
    ssh_host: str = ""  # slurm: submit through ssh to this login node (else sbatch runs here)
    ssh_user: str = ""
    runtime_venv: str = ".venv"  # local: the runtime environment

    def check(self) -> None:
        if self.executor not in ("local", "slurm", "docker"):
            raise LaunchError(f"--executor {self.executor!r}: choose local, slurm or docker")
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise LaunchError(f"--nodes {self.nodes} and --gpus-per-node {self.gpus_per_node} must be >= 1")
        if self.executor in ("local", "docker") and self.nodes != 1:
            raise LaunchError(f"--executor {self.executor} runs on one host: --nodes must be 1 (got {self.nodes}); "
                              "use --executor slurm for several nodes")
        if self.executor in ("slurm", "docker") and not self.image:
            raise LaunchError(f"--executor {self.executor} needs --image (the GPU image built from docker/Dockerfile.gpu)")
        if self.executor == "slurm" and self.ssh_host and not self.job_dir:
            raise LaunchError("--ssh-host needs --job-dir: a folder on the cluster for the job files and logs "
                              "(e.g. /lustre/$USER/vopd-jobs); the default would be a path on this machine")
        if self.executor == "slurm" and not self.account:
            raise LaunchError("--executor slurm needs --account (the Slurm account to charge)")
        for mount in self.mounts:
            if mount.count(":") not in (1, 2) or not all(mount.split(":")[:2]):
                raise LaunchError(f"--mount {mount!r}: expected SRC:DST or SRC:DST:MODE")
        if self.executor == "local":
            torchrun = REPO / self.runtime_venv / "bin" / "torchrun"
            if not torchrun.exists():
                raise LaunchError(f"--runtime-venv {self.runtime_venv}: {torchrun} not found; run `make setup` first")


def script(stage: Stage) -> run.Script:
    """``python -m stage.module *stage.args``; the torchrun launcher wraps it for distributed stages."""
    return run.Script(path=stage.module, entrypoint="python", m=True, args=list(stage.args))


def executor(opts: LaunchOptions, stage: Stage) -> run.Executor:
    procs = opts.gpus_per_node if stage.distributed else 1
    nodes = opts.nodes if stage.distributed else 1
    launcher = "torchrun" if stage.distributed else None
    if opts.executor == "local":
        env = {"PATH": str(REPO / opts.runtime_venv / "bin"),  # prepended to PATH: the runtime env's python/torchrun
               "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs)),
               "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore::UserWarning", **opts.env}
        return run.LocalExecutor(ntasks_per_node=procs, nodes=1, launcher=launcher, env_vars=env)
    env = {**GPU_ENV, **opts.env}
    if opts.executor == "slurm":
        job_dir = opts.job_dir or str(Path.home() / ".vopd" / "slurm-jobs")
        tunnel = (run.SSHTunnel(host=opts.ssh_host, user=opts.ssh_user or os.environ.get("USER", ""), job_dir=job_dir)
                  if opts.ssh_host else run.LocalTunnel(job_dir=job_dir))
        return run.SlurmExecutor(
            account=opts.account, partition=opts.partition or None, time=opts.time, nodes=nodes,
            ntasks_per_node=procs, gpus_per_node=opts.gpus_per_node, exclusive=True, job_name_prefix="vopd.",
            container_image=opts.image, container_mounts=list(opts.mounts), env_vars=env, tunnel=tunnel,
            launcher=launcher, packager=run.GitArchivePackager())
    return run.DockerExecutor(
        container_image=opts.image, num_gpus=opts.gpus_per_node, ntasks_per_node=procs, volumes=list(opts.mounts),
        env_vars=env, launcher=launcher, runtime="nvidia", ipc_mode="host", shm_size=DOCKER_SHM,
        ulimits=list(DOCKER_ULIMITS), packager=run.GitArchivePackager())
