"""Operator script: HF folder -> Megatron distributed checkpoint. Same as `vopd convert hf-to-megatron`.

    python tools/convert_hf_to_megatron.py --hf /models/Qwen2.5-VL-7B-Instruct --out /ckpt/q7b --tp 4 --pp 2
"""

import sys

from megatron_vopd.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "hf-to-megatron", *sys.argv[1:]]))
