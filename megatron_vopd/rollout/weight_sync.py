"""Weight sync: the live TP/PP-sharded Megatron model -> the rollout engine, after every optimiser step.

The stream is the bridge's ``export_hf`` (TP shards gathered, each tensor from its owning stage,
HF names from the one mapping table), cast to the engine's dtype (FP8/bf16 training weights go to
the engine in its own dtype), grouped into buckets of ``rollout.weight_sync_bucket_bytes``.
Collective over the model-parallel group: every rank calls it; the rank holding the engine (the
first rank of the model-parallel group) passes it, the others pass None.
"""

from __future__ import annotations

import time

from megatron_vopd.bridge.export import export_hf
from megatron_vopd.bridge.table import MappingTable
from megatron_vopd.rollout.engine import RolloutEngine, bucketize
from megatron_vopd.runtime.dtypes import torch_dtype


def sync_weights(engine: RolloutEngine | None, model, model_cfg, *, version: int, bucket_bytes: int,
                 dtype: str = "bfloat16", table: MappingTable | None = None) -> dict:
    t0 = time.perf_counter()
    table = table or MappingTable.for_config(model_cfg)
    stream = export_hf(model, table, model_cfg, dtype=torch_dtype(dtype))
    nbytes = 0

    def counted():
        nonlocal nbytes
        for name, tensor in stream:
            nbytes += tensor.numel() * tensor.element_size()
            yield name, tensor

    if engine is None:
        for _ in counted():
            pass
    else:
        engine.update_weights(bucketize(counted(), bucket_bytes), version)
    return {"seconds": time.perf_counter() - t0, "bytes": nbytes, "version": version}
