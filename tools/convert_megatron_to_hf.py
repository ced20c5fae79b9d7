"""Operator script: Megatron checkpoint -> HF folder. Same as `vopd convert megatron-to-hf`.

    python tools/convert_megatron_to_hf.py --ckpt /ckpt/q7b --out /models/q7b-vopd
"""

import sys

from megatron_vopd.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "megatron-to-hf", *sys.argv[1:]]))
