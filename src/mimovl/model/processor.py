"""The Qwen2.5-VL processor (tokenizer + image/video processors + chat template), tiny or loaded.

`build_tiny_processor()` makes a complete processor offline in well under a second: a byte-level BPE
trained on a small generated English corpus, Qwen2-VL's special tokens, a ChatML chat template with
MiMo's default system prompt, and Qwen2-VL image/video processors sized for tiny images.

Token ids: the trained BPE vocabulary comes first, then the added tokens in the order of `ADDED_TOKENS`
(as in Qwen2-VL, where `<|endoftext|>` follows the BPE vocabulary). `<|...|>` tokens are special (dropped
by `decode(..., skip_special_tokens=True)`); `<think>` and `</think>` are added but NOT special, so they
survive decoding and reward functions can split the answer at `</think>`.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoProcessor, Qwen2_5_VLProcessor, Qwen2Tokenizer, Qwen2VLImageProcessor
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

DEFAULT_SYSTEM_PROMPT = "You are MiMo, an AI assistant developed by Xiaomi."

# Qwen2-VL's special tokens, in Qwen2-VL's id order.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Added as whole tokens but not special: they must appear in decoded model output.
THINK_TOKENS = ("<think>", "</think>")
ADDED_TOKENS = SPECIAL_TOKENS + THINK_TOKENS

# Qwen2.5-VL's template with MiMo's default system prompt. Parts may be {"type": "image"} (or carry an
# "image"/"image_url" key), {"type": "video"}, or {"type": "text", "text": ...}.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE = 14, 2, 2
PIXEL_FACTOR = PATCH_SIZE * MERGE_SIZE  # image sides are resized to multiples of 28
# Tiny defaults: a 56x56 image is 4 patches -> 1 token after the 2x2 merge; 224x224 is 256 patches
# -> 64 tokens.
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 224 * 224

_WORDS = {
    "colour": ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "gray", "brown",
               "pink"],
    "shape": ["circle", "square", "triangle", "rectangle", "star", "box", "line", "dot", "ring", "cross"],
    "size": ["small", "large", "tiny", "big", "wide", "tall", "short", "long"],
    "place": ["left", "right", "top", "bottom", "center", "middle", "corner", "above", "below", "near"],
    "object": ["image", "picture", "photo", "video", "frame", "page", "text", "chart", "table", "object",
               "cat", "dog", "car", "tree", "person"],
}
_TEMPLATES = (
    "A {size} {colour} {shape} is at the {place} of the {object}.",
    "How many {colour} {shape}s are in the {object}? The answer is {n}.",
    "Question: what colour is the {shape}? Answer: {colour}.",
    "The {shape} at [{n}, {m}, {k}, {j}] is {colour}.",
    "Describe the {object}. There are {n} {shape}s, {m} of them {colour}.",
    "Point to the {colour} {shape}: ({n}, {m}).",
    "The event happens from {t1} to {t2} in the video.",
    "Let me think step by step. {n} + {m} = {s}, so the answer is {s}.",
    "Caption: {size} {colour} {shape} near a {object}; score {n}.{m}%",
    'The answer is {{"bbox_2d": [{n}, {m}, {k}, {j}]}} and the label is "{shape}".',
)


def tiny_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Generated English lines covering the words, digits and punctuation of captions, QA and grounding."""
    rng = random.Random(seed)
    lines = [" ".join(str(i) for i in range(100)), "0123456789 ()[]{}<>,.:;!?'\"-+=*/%#@&_|\\~^$"]
    for template in itertools.islice(itertools.cycle(_TEMPLATES), n_lines):
        n, m, k, j = (rng.randint(0, 999) for _ in range(4))
        words = {key: rng.choice(values) for key, values in _WORDS.items()}
        lines.append(template.format(
            n=n, m=m, k=k, j=j, s=n + m, t1=f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            t2=f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}", **words))
    return lines


def _train_bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE with Qwen2's normalizer and pre-tokenizer; returns (vocab, merges)."""
    tokenizer = Tokenizer(models.BPE())
    # Same pipeline as transformers' Qwen2Tokenizer, so its vocab/merges mean the same thing there.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(tiny_corpus(), trainer=trainer)
    # The Python API does not expose merges; the tokenizer's JSON form does.
    state = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def build_tiny_tokenizer(vocab_size: int = 1024) -> Qwen2Tokenizer:
    """A Qwen2 tokenizer of at most `vocab_size` tokens (BPE + `ADDED_TOKENS`) with the chat template."""
    vocab, merges = _train_bpe(vocab_size - len(ADDED_TOKENS))
    # Construct with eos = pad = <|endoftext|> so the constructor adds only that token, right after the
    # BPE vocabulary; the rest follow in Qwen2-VL's order, and only then is eos switched to <|im_end|>.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_processor(
    vocab_size: int = 1024,
    image_min_pixels: int = TINY_MIN_PIXELS,
    image_max_pixels: int = TINY_MAX_PIXELS,
    video_min_pixels: int = TINY_MIN_PIXELS,
    video_max_pixels: int = TINY_MAX_PIXELS,
) -> Qwen2_5_VLProcessor:
    """A complete Qwen2.5-VL processor built offline (see the module docstring for its tokens)."""
    # The torchvision-backed class, because that is what AutoProcessor (and so vLLM) loads back from a
    # saved directory: the PIL variant saves the same config but differs in the last bits of pixel_values.
    image_processor = Qwen2VLImageProcessor(
        min_pixels=image_min_pixels, max_pixels=image_max_pixels, patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE,
    )
    # cap_pixels_per_frame=True: qwen-vl-utils' per-frame budget, which transformers makes the default in 5.22.
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=video_min_pixels, max_pixels=video_max_pixels, patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE, cap_pixels_per_frame=True,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=build_tiny_tokenizer(vocab_size),
        video_processor=video_processor, chat_template=CHAT_TEMPLATE,
    )


def load_processor(path: str | Path) -> Qwen2_5_VLProcessor:
    """Load a processor from a local Qwen2.5-VL-format directory (never the hub)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"processor directory does not exist: {path}")
    return AutoProcessor.from_pretrained(str(path), local_files_only=True)
