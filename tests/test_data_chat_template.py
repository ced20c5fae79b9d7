"""megatron_vopd.data.chat_template: our prompt ids equal the models' chat templates run by transformers."""

import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor

from megatron_vopd.data.chat_template import (
    NON_THINKING_PREFIX, build_messages, encode_prompt, load_chat_template, problem_to_content, render_prompt,
)
from megatron_vopd.data.image_processing import QwenVLImageProcessor
from megatron_vopd.data.synth import QA, format_problem
from megatron_vopd.data.tokenizer import SPECIAL_TOKEN_IDS
from tests.data_fixtures import qwen25_tokenizer, qwen35_tokenizer, qwen3vl_tokenizer  # noqa: F401

PROBLEMS = [
    format_problem(QA("What is the color of the circle inside the red box?", ("blue", "green", "yellow", "gray"), 2)),
    "<image>\nHow many   windows are on the façade?\n\nHint: only focus on the objects inside the red bounding box\n\n"
    "A. 3\nB. 4\nC. 五\nD. more than 6\n\nAnswer with the option's letter from the given choices.",
    "  Look at the picture.<image>\nIs the sign readable?\nA. yes\nB. no\n",  # text before the image, stray spaces
]
IMAGE_SIZES = [(448, 448), (640, 333), (90, 120)]


def qwen25_processor(tokenizer) -> Qwen2_5_VLProcessor:
    """The HF processor of Qwen2.5-VL, offline: our tokenizer, the PIL image processor, the real template."""
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280),
                               tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                               chat_template=load_chat_template("qwen2.5"))


def test_problem_split_like_the_reference():
    assert problem_to_content("<image>\nQ?") == [{"type": "image"}, {"type": "text", "text": "\nQ?"}]
    assert build_messages("a<image>b") == [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]}]


@pytest.mark.parametrize("index", range(len(PROBLEMS)))
def test_qwen25_ids_equal_processor_with_chat_template(index, qwen25_tokenizer):
    problem, (w, h) = PROBLEMS[index], IMAGE_SIZES[index]
    image = Image.fromarray(np.random.default_rng(index).integers(0, 256, (h, w, 3), dtype=np.uint8))
    processor = qwen25_processor(qwen25_tokenizer)
    text = processor.apply_chat_template(build_messages(problem), tokenize=False, add_generation_prompt=True)
    assert text == render_prompt(problem, "qwen2.5")
    theirs = processor(text=[text], images=[image], return_tensors="np")

    ours_proc = QwenVLImageProcessor()
    pixels = ours_proc([image])
    ours = encode_prompt(problem, qwen25_tokenizer, "qwen2.5", [ours_proc.num_image_tokens(h, w)])
    np.testing.assert_array_equal(ours, theirs["input_ids"][0])
    np.testing.assert_array_equal(pixels["pixel_values"], theirs["pixel_values"])
    np.testing.assert_array_equal(pixels["image_grid_thw"], theirs["image_grid_thw"])
    # the image itself inside the messages, tokenised by the processor in one call
    messages = [{"role": "user", "content": [{"type": "image", "image": image} if c["type"] == "image" else c
                                             for c in problem_to_content(problem)]}]
    one_call = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                             return_dict=True, return_tensors="np")
    np.testing.assert_array_equal(ours, one_call["input_ids"][0])


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("index", range(len(PROBLEMS)))
def test_qwen35_ids_equal_template_rendered_by_transformers(index, thinking, qwen35_tokenizer):
    problem, (w, h) = PROBLEMS[index], IMAGE_SIZES[index]
    proc = QwenVLImageProcessor.for_family("qwen3.5")
    n_pads = proc.num_image_tokens(h, w)
    kwargs = {} if thinking else {"enable_thinking": False}
    text = qwen35_tokenizer.apply_chat_template(build_messages(problem), chat_template=load_chat_template("qwen3.5"),
                                                tokenize=False, add_generation_prompt=True, **kwargs)
    assert text == render_prompt(problem, "qwen3.5", thinking=thinking)
    assert text.endswith("<|im_start|>assistant\n" + ("<think>\n" if thinking else NON_THINKING_PREFIX))
    assert "system" not in text  # no system prompt
    theirs = qwen35_tokenizer(text.replace("<|image_pad|>", "<|image_pad|>" * n_pads), add_special_tokens=False)
    ours = encode_prompt(problem, qwen35_tokenizer, "qwen3.5", [n_pads], thinking=thinking)
    np.testing.assert_array_equal(ours, theirs["input_ids"])
    assert (ours == SPECIAL_TOKEN_IDS["qwen3.5"]["<|image_pad|>"]).sum() == n_pads


@pytest.mark.parametrize("index", range(len(PROBLEMS)))
def test_qwen3_vl_ids_equal_processor_with_chat_template(index, qwen3vl_tokenizer, tmp_path):
    """Qwen3-VL-Instruct: the processor our conversion writes (transformers' Qwen3VLProcessor, the real template)
    renders and tokenises the prompt and the image exactly as ``encode_prompt`` and our image processor."""
    from transformers import AutoProcessor

    from megatron_vopd.architecture import architecture

    problem, (w, h) = PROBLEMS[index], IMAGE_SIZES[index]
    image = Image.fromarray(np.random.default_rng(index).integers(0, 256, (h, w, 3), dtype=np.uint8))
    arch = architecture("qwen3-vl")
    arch.save_processor(tmp_path, min_pixels=64 * 64, max_pixels=512 * 512)
    processor = AutoProcessor.from_pretrained(tmp_path)
    text = processor.apply_chat_template(build_messages(problem), tokenize=False, add_generation_prompt=True)
    assert text == render_prompt(problem, "qwen3-vl") and "system" not in text and "<think>" not in text
    theirs = processor(text=[text], images=[image], return_tensors="np")
    ours_proc = QwenVLImageProcessor.for_family("qwen3-vl", min_pixels=64 * 64, max_pixels=512 * 512)
    pixels = ours_proc([image])
    ours = encode_prompt(problem, qwen3vl_tokenizer, "qwen3-vl", [ours_proc.num_image_tokens(h, w)])
    np.testing.assert_array_equal(ours, theirs["input_ids"][0])
    # transformers loads the saved processor with its torchvision backend (Qwen2VLImageProcessor), whose resize
    # rounds differently from PIL's (ours, and Qwen2VLImageProcessorPil's exactly): measured, one intensity level
    # (2/255 after the 0.5 normalisation) in 0.2% of the values of a resized image
    diff = np.abs(pixels["pixel_values"] - theirs["pixel_values"])
    assert diff.max() <= 2 / 255 + 1e-6 and (diff > 1e-6).mean() < 0.01, (diff.max(), (diff > 1e-6).mean())
    np.testing.assert_array_equal(pixels["image_grid_thw"], theirs["image_grid_thw"])


def test_qwen3_vl_special_tokens_are_qwen3s(qwen3vl_tokenizer):
    """Qwen2.5's 22 added tokens at 151643-151664, then <tool_response>, </tool_response>, <think>, </think>."""
    ids = SPECIAL_TOKEN_IDS["qwen3-vl"]
    assert ids["<|image_pad|>"] == 151655 and ids["<|vision_start|>"] == 151652 and ids["</think>"] == 151668
    assert len(qwen3vl_tokenizer) == 151669
    assert qwen3vl_tokenizer.decode([151667, 151645], skip_special_tokens=True) == "<think>"  # not special


def test_student_and_teacher_differ_only_in_image_pads(qwen25_tokenizer):
    student = encode_prompt(PROBLEMS[0], qwen25_tokenizer, "qwen2.5", [256])
    teacher = encode_prompt(PROBLEMS[0], qwen25_tokenizer, "qwen2.5", [16])
    pad = SPECIAL_TOKEN_IDS["qwen2.5"]["<|image_pad|>"]
    assert len(student) - len(teacher) == 240
    np.testing.assert_array_equal(student[student != pad], teacher[teacher != pad])


def test_templates_are_the_models_own():
    q25, q35 = load_chat_template("qwen2.5"), load_chat_template("qwen3.5")
    assert "Qwen2.5-VL" in q25.split("-#}")[0] and "You are a helpful assistant." in q25
    assert "Qwen3.5" in q35.split("-#}")[0] and "enable_thinking is defined and enable_thinking is false" in q35
    import hashlib

    q3vl = load_chat_template("qwen3-vl")
    body = q3vl.split("-#}\n", 1)[1] + "\n"  # the published template below our comment
    assert hashlib.sha256(body.encode()).hexdigest() == "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
    with pytest.raises(ValueError, match="data.tokenizer"):
        load_chat_template("llama")


def test_wrong_number_of_image_counts_is_refused(qwen25_tokenizer):
    with pytest.raises(ValueError, match="1 images but 2"):
        encode_prompt(PROBLEMS[0], qwen25_tokenizer, "qwen2.5", [4, 4])
