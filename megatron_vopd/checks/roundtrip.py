"""HF -> Megatron -> HF in one torchrun worker: the two conversions ``vopd convert`` runs (the same functions,
at the same TP x PP), without a process start between them. The tests compare the folders tensor by tensor:

    torchrun --nproc-per-node 4 -m megatron_vopd.checks.roundtrip --hf HF_DIR --out DIR --tp 2 --pp 2

Writes DIR/megatron and DIR/hf; prints ``RESULT {"megatron": ..., "hf": ...}`` on rank 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    import torch.distributed as dist

    from megatron_vopd.commands.convert import add_processor_files
    from megatron_vopd.models.conversion import hf_to_megatron, megatron_to_hf
    from megatron_vopd.runtime import destroy_distributed

    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    args = ap.parse_args(argv)
    out = Path(args.out)
    mg = hf_to_megatron(args.hf, str(out / "megatron"), args.tp, args.pp)
    back = megatron_to_hf(str(mg), str(out / "hf"), args.tp, args.pp)
    add_processor_files(back)
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps({"megatron": str(mg), "hf": str(back)}), flush=True)
    dist.barrier()
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
