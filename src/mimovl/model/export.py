"""Write a Qwen2.5-VL directory that transformers (`from_pretrained`) and vLLM (`LLM(model=DIR)`) both load.

The directory holds: `config.json`, `generation_config.json`, safetensors weights (`model.safetensors`, or
shards with an index), the tokenizer with its chat template, `processor_config.json`, and the stand-alone
`preprocessor_config.json` / `video_preprocessor_config.json` that older loaders look for.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from transformers import GenerationConfig, PreTrainedConfig, Qwen2_5_VLForConditionalGeneration

from mimovl.model.build import as_dtype, generation_config
from mimovl.outputs import atomic_directory

log = logging.getLogger(__name__)


def export_hf(
    model: Qwen2_5_VLForConditionalGeneration,
    processor,
    out_dir: str | Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Export `model` (or, when given, the full `state_dict` gathered from a sharded model, with `model`
    supplying only the config) with `processor` to `out_dir`; returns `out_dir`.

    `dtype` casts the saved weights (e.g. "bfloat16" for a 7B release); default: keep their dtype.
    """
    if state_dict is None:
        if any(p.is_meta or isinstance(p, DTensor) for p in model.parameters()):
            raise ValueError("model is sharded or on the meta device; pass the gathered full state_dict")
        state_dict = model.state_dict()  # views of a live, unsharded model: no copies
    return export_state_dict(state_dict, model.config, processor, out_dir, dtype=dtype,
                             generation=getattr(model, "generation_config", None))


# Safetensors shards of at most this size, with an index (one file below it): a 7B export is 4 files, as the
# released checkpoints are, rather than one of 15.5 GiB (transformers' default limit is 50 GB).
EXPORT_SHARD = "5GB"


def export_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: PreTrainedConfig,
    processor,
    out_dir: str | Path,
    dtype: str | torch.dtype | None = None,
    generation: GenerationConfig | None = None,
) -> Path:
    """Export a full state dict with transformers' in-memory names (`model.visual.*`,
    `model.language_model.*`, `lm_head.*`; an extra leading `model.` from a LightningModule is stripped)
    under `config`. Strict: a missing or unexpected tensor raises, naming it. `generation` defaults to
    stopping on <|im_end|> or <|endoftext|>, ids from the processor's tokenizer.

    Atomic: the files are written into a temp directory beside `out_dir`, which then replaces `out_dir` whole, so a
    reader (or a kill) never meets a half-written export (`mimovl.outputs.atomic_directory`)."""
    out_dir = Path(out_dir)
    state_dict = _strip_wrapper_prefix(state_dict)
    dtype = as_dtype(dtype) if dtype is not None else next(iter(state_dict.values())).dtype
    # A meta-device shell holds the tensors by reference (assign=True): no second copy of a 7B model,
    # and transformers itself maps in-memory names to the checkpoint names that vLLM expects.
    config = copy.deepcopy(config)  # the caller's live model keeps its own config untouched
    with torch.device("meta"):
        shell = Qwen2_5_VLForConditionalGeneration(config)
    tensors = {k: v.detach().to("cpu", dtype) for k, v in state_dict.items()}
    shell.load_state_dict(tensors, strict=True, assign=True)
    shell.config.dtype = dtype
    shell.generation_config = generation or generation_config(processor.tokenizer)
    with atomic_directory(out_dir) as tmp:
        shell.save_pretrained(str(tmp), max_shard_size=EXPORT_SHARD)
        processor.save_pretrained(str(tmp))
        processor.image_processor.save_pretrained(str(tmp))
        processor.video_processor.save_pretrained(str(tmp))
    log.info("exported %d tensors (%s) to %s", len(tensors), dtype, out_dir)
    return out_dir


def _strip_wrapper_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names as Qwen2_5_VLForConditionalGeneration has them, whatever module wrapped it."""
    names = list(state_dict)
    for prefix in ("_orig_mod.", "model."):
        if names and all(n.startswith((prefix + "model.", prefix + "lm_head.")) for n in names):
            return {n.removeprefix(prefix): v for n, v in state_dict.items()}
    return dict(state_dict)
