"""HF <-> Megatron checkpoint conversion of any registered architecture (run by ``vopd convert`` under torchrun, or in one process).

hf-to-megatron: build the model at the requested TP x PP, fill each rank's shards straight from the
safetensors files (each stage reads only its layers), save a Megatron distributed checkpoint (which
loads at any other layout). megatron-to-hf: load such a checkpoint, stream ``export_hf`` into
safetensors shards on rank 0, and write config.json plus the tokenizer/processor files.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_vopd.architecture import architecture
from megatron_vopd.bridge.distribution import load_sharded, local_parameters
from megatron_vopd.bridge.export import save_hf_weights
from megatron_vopd.bridge.hf_config import read_hf_config
from megatron_vopd.bridge.hf_io import HFCheckpoint
from megatron_vopd.bridge.megatron_ckpt import load_model, model_checkpoint, prepare_output_dir, read_model_config, save_model
from megatron_vopd.bridge.table import MappingTable
from megatron_vopd.config import ConfigError, DataConfig, ParallelConfig, validate, VopdConfig
from megatron_vopd.runtime.distributed import log_rank0

ASSETS_DIR = "hf_assets"
# Files of a HF folder that are not weights: carried through a Megatron checkpoint unchanged.
HF_ASSETS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
             "added_tokens.json", "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
             "video_preprocessor_config.json", "generation_config.json")


class ConversionError(ValueError):
    pass


def _log(msg: str) -> None:
    log_rank0(f"[convert] {msg}")


def check_hf_names(ckpt: HFCheckpoint, table: MappingTable) -> list[str]:
    """Every HF tensor the table needs is present, and nothing else is but the tensors the family
    skips (``Architecture.hf_skipped_prefixes``: Qwen3.5's multi-token-prediction layer); returns those."""
    skip = architecture(table.arch).hf_skipped_prefixes
    expected, found = table.hf_names(), ckpt.names()
    skipped = sorted(n for n in found - expected if n.startswith(skip)) if skip else []
    missing, unexpected = sorted(expected - found), sorted(found - expected - set(skipped))
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing[:20])}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:20])}")
    if problems:
        raise ConversionError(f"{ckpt.dir} does not match the {table.arch} mapping table:\n  " + "\n  ".join(problems))
    return skipped


def check_hf_shapes(ckpt: HFCheckpoint, table: MappingTable, model, cfg) -> None:
    """Collective: the HF tensors behind every local parameter have the shapes the model needs."""
    from megatron.core import parallel_state as ps

    tp_size, problems = ps.get_tensor_model_parallel_world_size(), []
    for global_name, param in local_parameters(model):
        mapping = table.megatron(global_name)
        needed = mapping.to_hf(torch.empty(mapping.full_shape(param.shape, tp_size), device="meta"), cfg)
        for hf_name, t in needed.items():
            if ckpt.shape(hf_name) != tuple(t.shape):
                problems.append(f"shape mismatch for {hf_name}: expected {tuple(t.shape)}, found {ckpt.shape(hf_name)}")
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, problems)
    problems = sorted({p for rank in everyone for p in rank})
    if problems:
        raise ConversionError(f"{ckpt.dir} does not match its config.json:\n  " + "\n  ".join(problems[:30]))


def check_layout(cfg, tp: int, pp: int) -> None:
    """ConfigError unless the model splits at TP x PP; the message names ``--tp`` / ``--pp`` (the options
    of ``vopd convert``) where the recipe's keys would be ``parallel.*``."""
    full = VopdConfig(model=cfg, parallel=ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp),
                      data=DataConfig(tokenizer=architecture(cfg.arch).tokenizer))
    try:
        validate(full, world_size=tp * pp, te_available=False)
        if cfg.vocab_size % tp:
            raise ConfigError(f"parallel.tensor_model_parallel_size={tp} does not divide model.vocab_size={cfg.vocab_size}")
    except ConfigError as e:
        raise ConfigError(str(e).replace("parallel.tensor_model_parallel_size=", "--tp ")
                          .replace("parallel.pipeline_model_parallel_size=", "--pp ")) from None


def _runnable_here(cfg):
    if not torch.cuda.is_available():
        cfg.transformer_impl = "local"
    return cfg


def preflight_hf_to_megatron(hf_dir: str, out: str, tp: int, pp: int, overwrite: bool):
    """Every check that needs no processes: config, layout, output folder, tensor names."""
    cfg = _runnable_here(read_hf_config(hf_dir))
    check_layout(cfg, tp, pp)
    prepare_output_dir(out, overwrite)
    table = MappingTable.for_config(cfg)
    ckpt = HFCheckpoint(hf_dir)
    skipped = check_hf_names(ckpt, table)
    if skipped:
        prefixes = ", ".join(architecture(cfg.arch).hf_skipped_prefixes)
        _log(f"skipping {len(skipped)} tensors under {prefixes} (not part of the trained model; e.g. {skipped[0]})")
    return cfg, table, ckpt


def preflight_megatron_to_hf(ckpt_dir: str, out: str, tp: int, pp: int, overwrite: bool):
    cfg = _runnable_here(read_model_config(model_checkpoint(ckpt_dir)))
    check_layout(cfg, tp, pp)
    return cfg, prepare_output_dir(out, overwrite)


def hf_to_megatron(hf_dir: str, out: str, tp: int = 1, pp: int = 1, overwrite: bool = False) -> Path:
    from megatron_vopd.runtime import init_distributed

    t0 = time.time()
    cfg, table, ckpt = preflight_hf_to_megatron(hf_dir, out, tp, pp, overwrite)
    init_distributed(tp, pp)
    _log(f"{hf_dir} ({cfg.arch}, {cfg.num_layers} layers) -> Megatron at TP{tp} x PP{pp}")
    model = architecture(cfg.arch).build_model(cfg, ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp),
                        init_weights=False)
    check_hf_shapes(ckpt, table, model, cfg)

    def full_tensor(global_name: str) -> torch.Tensor:
        mapping = table.megatron(global_name)
        return mapping.to_megatron({h: ckpt.get(h) for h in mapping.hf}, cfg).to(model.config.params_dtype)

    load_sharded(model, table, full_tensor)
    assets = {f"{ASSETS_DIR}/{n}": Path(hf_dir) / n for n in HF_ASSETS if (Path(hf_dir) / n).is_file()}
    save_model(model, out, cfg, overwrite=overwrite, extra_files=assets)
    _log(f"wrote {out} in {time.time() - t0:.1f}s ({sum(p.numel() for _, p in local_parameters(model)):,} parameters on rank 0)")
    return Path(out)


def megatron_to_hf(ckpt_dir: str, out: str, tp: int = 1, pp: int = 1, overwrite: bool = False,
                   shard_bytes: int = 2 * 1024**3, weights: str = "student") -> Path:
    """Export a checkpoint (or a training run's latest) as a Hugging Face folder: the student's weights,
    or with ``weights="teacher"`` a training checkpoint's EMA/fixed teacher copy."""
    from megatron_vopd.runtime import init_distributed

    t0 = time.time()
    cfg, out_path = preflight_megatron_to_hf(ckpt_dir, out, tp, pp, overwrite)
    ckpt_dir = str(model_checkpoint(ckpt_dir))
    init_distributed(tp, pp)
    model = architecture(cfg.arch).build_model(cfg, ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp),
                        init_weights=False)
    load_model(model, ckpt_dir, weights=weights)
    _log(f"{ckpt_dir} ({weights} weights) -> Hugging Face folder {out}")
    table = MappingTable.for_config(cfg)
    rank0 = dist.get_rank() == 0
    tmp = out_path.with_name(out_path.name + ".tmp")
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
    nbytes = save_hf_weights(model, table, cfg, tmp, shard_bytes=shard_bytes)
    if rank0:
        for asset in (Path(ckpt_dir) / ASSETS_DIR).glob("*"):
            shutil.copy2(asset, tmp / asset.name)
        if out_path.exists():
            shutil.rmtree(out_path)
        tmp.rename(out_path)
    dist.barrier()
    _log(f"wrote {out} ({nbytes / 1e6:.1f} MB)")
    _log(f"done in {time.time() - t0:.1f}s")
    return out_path
