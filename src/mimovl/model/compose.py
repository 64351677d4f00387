"""The MiMo-VL construction: a pre-trained ViT + a fresh projector + a pre-trained LLM -> one Qwen2.5-VL.

    model, processor = compose(vit_path="Qwen2.5-VL-7B-Instruct/", llm_path="MiMo-7B-Base/")

- ViT: `visual.*` (or `model.visual.*`) tensors of a Qwen2.5-VL-format directory, except `merger.*`.
- LLM: a Qwen2-format causal-LM directory (Qwen2ForCausalLM, MiMoForCausalLM): `model.embed_tokens`,
  `model.layers.*`, `model.norm`, `lm_head`. Multi-token-prediction tensors (names containing `mtp`)
  are dropped.
- Projector: Qwen2.5-VL's patch merger (`visual.merger.*`), freshly initialised from `seed`.
Weights are read straight from safetensors into a model allocated once (meta device, then `to_empty`), so
a 7B composition holds one copy of the weights, not two.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    AutoVideoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from mimovl.model.build import as_dtype, check_hf_dir, generation_config, mrope_section, token_ids
from mimovl.model.mrope import use_reference_positions
from mimovl.model.processor import CHAT_TEMPLATE

log = logging.getLogger(__name__)

# The paper's shapes (MiMo-VL report; MiMo-7B report). Vision intermediate_size is 3420, the value in the
# Qwen2.5-ViT checkpoints MiMo-VL starts from (Qwen2.5-VL-7B's config.json), not the 3456 sometimes quoted.
MIMO_VL_7B = {
    "vision": {
        "depth": 32, "hidden_size": 1280, "num_heads": 16, "intermediate_size": 3420, "patch_size": 14,
        "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "temporal_patch_size": 2,
        "spatial_merge_size": 2,
    },
    "llm": {
        "num_hidden_layers": 36, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 11008, "vocab_size": 151680,
    },
}

# Fields of a Qwen2-format LLM config.json carried over to the Qwen2.5-VL text config as they are.
_TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "attention_dropout",
    "initializer_range", "use_sliding_window", "sliding_window", "max_window_layers",
)


def check_shapes(vision: dict, llm: dict, expected: dict = MIMO_VL_7B) -> None:
    """Raise ValueError naming every field of the ViT or LLM config that differs from `expected`."""
    wrong = [
        f"{part}.{field}: expected {want}, got {got.get(field)}"
        for part, got in (("vision", vision), ("llm", llm))
        for field, want in expected[part].items()
        if (list(got.get(field)) if isinstance(want, list) else got.get(field)) != want
    ]
    if wrong:
        raise ValueError("component configs do not match the expected shapes: " + "; ".join(wrong))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _safetensors_files(directory: Path) -> list[Path]:
    """The safetensors shards of a checkpoint directory (index-listed when there is an index)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return sorted({directory / f for f in _read_json(index)["weight_map"].values()})
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    return files


def text_config_from_llm(llm: dict) -> dict:
    """A Qwen2.5-VL text config (dict) from a Qwen2-format LLM config.json, with MRoPE added."""
    rope = dict(llm.get("rope_parameters") or llm.get("rope_scaling") or {})
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
        raise ValueError(f"LLM rope scaling {rope} is not supported with MRoPE; only default RoPE is")
    head_dim = llm["hidden_size"] // llm["num_attention_heads"]
    if llm.get("head_dim", head_dim) != head_dim:
        raise ValueError(f"LLM head_dim {llm['head_dim']} != hidden_size / num_attention_heads ({head_dim})")
    text = {k: llm[k] for k in _TEXT_FIELDS if llm.get(k) is not None}
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": rope.get("rope_theta", llm.get("rope_theta", 1_000_000.0)),
        "mrope_section": mrope_section(head_dim),
    }
    return text


def compose_config(
    vision: dict, llm: dict, tokenizer, tie_word_embeddings: bool = False
) -> Qwen2_5_VLConfig:
    """The composed model's config: the ViT's vision config projecting into the LLM's width, the LLM's
    text config with MRoPE, and token ids from `tokenizer`."""
    vision = dict(vision) | {"out_hidden_size": llm["hidden_size"]}
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = text_config_from_llm(llm) | {
        "bos_token_id": eot, "pad_token_id": eot,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
    }
    return Qwen2_5_VLConfig(
        vision_config=vision, text_config=text, tie_word_embeddings=tie_word_embeddings,
        **token_ids(tokenizer),
    )


def _build_processor(vit_path: Path, tokenizer_path: Path) -> Qwen2_5_VLProcessor:
    """Tokenizer from `tokenizer_path`, image (and video) processor from the ViT directory."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(str(vit_path), local_files_only=True)
    try:
        video_processor = AutoVideoProcessor.from_pretrained(str(vit_path), local_files_only=True)
    except (OSError, ValueError):  # ViT directory without a video processor config
        video_processor = Qwen2VLVideoProcessor()
    # A text LLM's template knows no images; keep the tokenizer's own only when it does.
    own = tokenizer.chat_template
    template = own if isinstance(own, str) and "<|image_pad|>" in own else CHAT_TEMPLATE
    tokenizer.chat_template = template
    return Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=template,
    )


def _vit_tensors(vit_path: Path):
    """(in-memory name -> (file, key)) for every ViT tensor except the merger; and the merger's keys."""
    found, skipped = {}, []
    for file in _safetensors_files(vit_path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys() but is not iterable)
                name = key.removeprefix("model.")  # saved as `visual.*`, or `model.visual.*` by some writers
                if not name.startswith("visual."):
                    continue
                rest = name.removeprefix("visual.")
                if rest.startswith("merger."):
                    skipped.append(key)
                else:
                    found[f"model.visual.{rest}"] = (file, key)
    return found, skipped


def _llm_tensors(llm_path: Path):
    """(in-memory name -> (file, key)) for the LLM's tensors; and the dropped (MTP, unknown) names."""
    found, dropped = {}, []
    for file in _safetensors_files(llm_path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys() but is not iterable)
                if "mtp" in key:
                    dropped.append(key)
                elif key.startswith("lm_head."):
                    found[key] = (file, key)
                elif key.startswith("model."):
                    found[f"model.language_model.{key.removeprefix('model.')}"] = (file, key)
                else:
                    dropped.append(key)
    return found, dropped


def _allocate(config: Qwen2_5_VLConfig, dtype: torch.dtype) -> Qwen2_5_VLForConditionalGeneration:
    """An uninitialised model with parameters in `dtype`, allocated once. As in from_pretrained, the default
    dtype is set while building, so RoPE buffers keep the float32 the modules compute them in."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model = model.to_empty(device="cpu")
    use_reference_positions(model)
    return model


def _load_into(model: torch.nn.Module, sources: dict[str, tuple[Path, str]], what: str) -> None:
    """Copy each source tensor into the model parameter of the same name; mark it initialised."""
    params = dict(model.named_parameters())
    for name, (file, key) in sources.items():
        if name not in params:
            raise KeyError(f"{what} tensor {key!r} in {file} has no place in the model (as {name!r})")
    with torch.no_grad():
        for name, (file, key) in sources.items():
            # One safe_open per tensor: safetensors hands back a view of the file's memory map, so the pages read
            # stay in this process's RSS until the file is closed; closed per tensor, a 7B composition peaks at
            # the model plus its largest tensor instead of the model plus a whole shard.
            with safe_open(str(file), framework="pt") as f:
                tensor, param = f.get_tensor(key), params[name]
                if tensor.shape != param.shape:
                    raise ValueError(f"{what} tensor {key!r} in {file}: shape {tuple(tensor.shape)}, "
                                     f"model expects {tuple(param.shape)}")
                param.copy_(tensor)
                del tensor
            param._is_hf_initialized = True  # so initialize_weights() leaves it alone


def compose(
    vit_path: str | Path,
    llm_path: str | Path,
    tokenizer_path: str | Path | None = None,
    seed: int = 0,
    dtype: str | torch.dtype = "bfloat16",
    expect_shapes: bool = False,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """Compose ViT + fresh projector + LLM into a Qwen2.5-VL model (see the module docstring).

    `tokenizer_path` defaults to `llm_path`; it must hold Qwen2-VL's vision tokens. `expect_shapes=True`
    checks both component configs against `MIMO_VL_7B` first. Raises FileNotFoundError naming a missing
    directory, KeyError naming a missing or unplaceable tensor, ValueError naming a shape mismatch.
    """
    vit_path = check_hf_dir(vit_path, "ViT (Qwen2.5-VL-format)")
    llm_path = check_hf_dir(llm_path, "LLM (Qwen2-format)")
    tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else llm_path
    if not tokenizer_path.is_dir():
        raise FileNotFoundError(f"tokenizer directory does not exist: {tokenizer_path}")

    vit_config = Qwen2_5_VLConfig.from_pretrained(str(vit_path), local_files_only=True).vision_config
    llm_config = _read_json(llm_path / "config.json")
    if expect_shapes:
        check_shapes(vit_config.to_dict(), llm_config)
    processor = _build_processor(vit_path, tokenizer_path)
    tokenizer = processor.tokenizer
    if len(tokenizer) > llm_config["vocab_size"]:
        raise ValueError(f"tokenizer at {tokenizer_path} has {len(tokenizer)} tokens, more than the LLM's "
                         f"vocab_size {llm_config['vocab_size']}")

    vit_sources, merger_keys = _vit_tensors(vit_path)
    llm_sources, dropped = _llm_tensors(llm_path)
    tied = "lm_head.weight" not in llm_sources and bool(llm_config.get("tie_word_embeddings", False))
    config = compose_config(vit_config.to_dict(), llm_config, tokenizer, tie_word_embeddings=tied)

    model = _allocate(config, as_dtype(dtype))
    _load_into(model, vit_sources, "ViT")
    _load_into(model, llm_sources, "LLM")
    if tied:
        model.tie_weights()
    fresh = [n for n, p in model.named_parameters() if not getattr(p, "_is_hf_initialized", False)]
    not_projector = [n for n in fresh if ".merger." not in n]
    if not_projector:
        raise KeyError(f"required tensors missing from {vit_path} / {llm_path}: {not_projector[:8]}"
                       + (f" and {len(not_projector) - 8} more" if len(not_projector) > 8 else ""))
    # Initialise what was not loaded: the projector, and the RoPE buffers that to_empty() left blank.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.initialize_weights()
    model.generation_config = generation_config(tokenizer)

    log.info("compose: loaded %d ViT tensors from %s and %d LLM tensors from %s", len(vit_sources),
             vit_path, len(llm_sources), llm_path)
    log.info("compose: dropped %d tensors (%d of the ViT dir's merger, LLM: %s)",
             len(merger_keys) + len(dropped), len(merger_keys), dropped[:8])
    log.info("compose: fresh projector (seed %d): %s", seed, fresh)
    return model, processor
