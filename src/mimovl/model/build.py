"""Build a tiny random Qwen2.5-VL model (CPU, tests) or load any Qwen2.5-VL-format directory.

Both return `(model, processor)`: a `transformers.Qwen2_5_VLForConditionalGeneration` and its
`Qwen2_5_VLProcessor`. Parameter names in memory are `model.visual.*` (ViT + `merger` projector),
`model.language_model.*` and `lm_head.*` (see `mimovl.model.parts`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from mimovl.model.mrope import use_reference_positions
from mimovl.model.processor import (
    MERGE_SIZE,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    build_tiny_processor,
    load_processor,
)

log = logging.getLogger(__name__)


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`"bfloat16"` (as Hydra passes it) or `torch.bfloat16` -> `torch.bfloat16`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if isinstance(value, torch.dtype):
        return value
    raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL's MRoPE split (temporal, height, width) of head_dim/2 rotary pairs.

    [16, 24, 24] at head_dim 128 (the 7B models); the same 1/4, 3/8, 3/8 proportions at other sizes.
    """
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def token_ids(tokenizer) -> dict[str, int]:
    """The Qwen2_5_VLConfig token-id fields, read from the tokenizer (never assumed)."""
    ids = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    out = {field: tokenizer.convert_tokens_to_ids(tok) for field, tok in ids.items()}
    missing = [ids[f] for f, i in out.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks Qwen2-VL tokens {missing}")
    return out


def generation_config(tokenizer) -> GenerationConfig:
    """Stop on <|im_end|> (end of an assistant turn) or <|endoftext|>; pad with <|endoftext|>."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot, bos_token_id=eot)


def build_tiny(
    vocab_size: int = 1024,
    vision_depth: int = 2,
    vision_hidden_size: int = 32,
    vision_heads: int = 2,
    vision_intermediate_size: int = 64,
    fullatt_block_indexes: tuple[int, ...] = (1,),
    window_size: int = 112,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    rope_theta: float = 1_000_000.0,
    max_position_embeddings: int = 4096,
    image_min_pixels: int | None = None,
    image_max_pixels: int | None = None,
    seed: int = 0,
    dtype: str | torch.dtype = "float32",
) -> tuple[Qwen2_5_VLForConditionalGeneration, object]:
    """A random-init Qwen2.5-VL with the tiny processor; the same seed gives the same weights.

    `vocab_size` bounds the tokenizer; the model's vocabulary is the tokenizer length rounded up to 64.
    Keep hidden_size / num_heads (the text head_dim) at 32 or more: vLLM's CPU attention supports only
    head sizes 32, 64, 80, 96, 112, 128, ... ("Unsupported CPU attention configuration: head_dim=16").
    """
    pixels = {k: v for k, v in (("image_min_pixels", image_min_pixels),
                                ("image_max_pixels", image_max_pixels)) if v is not None}
    processor = build_tiny_processor(vocab_size, **pixels)
    tokenizer = processor.tokenizer
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2_5_VLConfig(
        vision_config={
            "depth": vision_depth, "hidden_size": vision_hidden_size, "num_heads": vision_heads,
            "intermediate_size": vision_intermediate_size, "hidden_act": "silu",
            "fullatt_block_indexes": list(fullatt_block_indexes), "window_size": window_size,
            "out_hidden_size": hidden_size, "patch_size": PATCH_SIZE, "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        },
        text_config={
            "vocab_size": -(-len(tokenizer) // 64) * 64, "hidden_size": hidden_size,
            "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads, "intermediate_size": intermediate_size,
            "max_position_embeddings": max_position_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta,
                                "mrope_section": mrope_section(hidden_size // num_heads)},
            "bos_token_id": eot, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": eot,
        },
        tie_word_embeddings=False,
        **token_ids(tokenizer),
    )
    # Seed a forked RNG so building a model neither depends on nor disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = generation_config(tokenizer)
    use_reference_positions(model)
    return model.to(as_dtype(dtype)), processor


def check_hf_dir(path: str | Path, what: str = "Qwen2.5-VL") -> Path:
    """`path` as a Path, or a FileNotFoundError naming it when it is not a directory with a config.json."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory does not exist: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{what} directory has no config.json: {path}")
    return path


def load_hf(
    path: str | Path, dtype: str | torch.dtype = "float32"
) -> tuple[Qwen2_5_VLForConditionalGeneration, object]:
    """Load any local Qwen2.5-VL-format directory (e.g. a released MiMo-VL-7B-SFT) and its processor."""
    path = check_hf_dir(path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(path), dtype=as_dtype(dtype), local_files_only=True
    )
    use_reference_positions(model)
    log.info("loaded %s (%.1fM parameters)", path, sum(p.numel() for p in model.parameters()) / 1e6)
    return model, load_processor(path)
