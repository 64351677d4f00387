"""The sample schema: what the shard reader yields and what the processing code consumes.

A sample is a dict:

    {
      "key": str,             # unique in its source; no "." or "/" (webdataset splits names at the first dot)
      "source": str,          # the mix component it came from (added by the reader)
      "type": str,            # one of SAMPLE_TYPES
      "messages": [{"role": "system" | "user" | "assistant" | "document",
                    "content": [{"type": "text", "text": str} | {"type": "image"} | {"type": "video"}]}],
      "images": [PIL.Image.Image],    # RGB, one per {"type": "image"} part, in order of appearance
      "videos": [{"frames": [PIL.Image.Image], "timestamps": [float seconds], "fps": float}],
                                      # one per {"type": "video"} part, in order of appearance
      "meta": dict,           # task facts (JSON-serialisable), see below
      "skipped_before": int,  # corrupt samples this reader worker dropped since its previous sample (added
                              # by the reader)
      "dropped_before": {str: int},  # the same by reason, plus shard read errors (mimovl.data.stream.DROPPED;
                              # added by the reader; only names with a count)
      "origin": (str, str, int),  # (source, shard, byte offset of its first tar header): where the reader can
                              # read it again (added by the reader; a resumed stream re-reads held samples by it)
    }

Types. DOCUMENT_TYPES (caption, interleaved, text) hold exactly one message with role "document" whose parts
are text and images in reading order; training supervises all of their text. Every other type is a chat:
an optional system message (text only), then user and assistant messages alternating, starting with user
and ending with assistant; images and videos appear only in user messages, assistant messages are text.
Reasoning answers read `<think>steps</think>answer`.
A preference sample is a chat prompt without its answer: the same roles, but ending with a user message; its
two candidate answers are meta["chosen"] (the better one) and meta["rejected"] (strings, assistant text).

Answer conventions (the text of the last assistant message):
  grounding   "[x1, y1, x2, y2]", absolute pixels of the stored image
  gui         '{"action": "click", "point": [x, y]}' (or a "box" instead of "point")
  video       temporal grounding "[mm:ss,mm:ss]"
  qa / ocr    the answer text; reasoning "<think>...</think>answer"

meta. Free-form task facts in absolute pixels and seconds, e.g. {"box": [x1, y1, x2, y2]}, {"count": 3},
{"segment": [start_s, end_s]}, {"words": [{"text": "cat", "box": [...]}]}; a preference sample's meta holds
{"chosen": str, "rejected": str}, two different answers. Samples meant for RL also carry
"task" (a key of mimovl.rewards.REWARDS) and "answer" (that reward's answer: an int for counting, a box,
[start_s, end_s], or a string for math).

On disk (webdataset tar, members share the key prefix), see mimovl.data.shards:
  KEY.json             {"type", "messages", "meta", "media": [...]} with media in order of appearance:
                       {"kind": "image", "name": "img0.png"} |
                       {"kind": "video", "names": ["vid0.0000.jpg", ...], "timestamps": [...], "fps": float}
  KEY.img{i}.png|jpg   image i
  KEY.vid{j}.{k:04d}.jpg   frame k of video j
"""

from __future__ import annotations

import re

from PIL import Image

SAMPLE_TYPES = (
    "caption", "interleaved", "ocr", "grounding", "gui", "video", "qa", "reasoning", "text", "preference",
)
DOCUMENT_TYPES = frozenset({"caption", "interleaved", "text"})
PART_TYPES = ("text", "image", "video")
# What a reward model reads: "vision" samples show images or videos, "text" ones do not.
MODALITIES = ("vision", "text")
STORED_FIELDS = ("key", "type", "messages", "images", "videos", "meta")

_KEY = re.compile(r"[^./\s]+")


def text(s: str) -> dict:
    """A text content part."""
    return {"type": "text", "text": s}


def image() -> dict:
    """An image content part (its pixels are the next entry of sample["images"])."""
    return {"type": "image"}


def video() -> dict:
    """A video content part (its frames are the next entry of sample["videos"])."""
    return {"type": "video"}


def chat(user: list[dict], answer: str, system: str | None = None) -> list[dict]:
    """A one-turn chat: optional system text, the user's parts, the assistant's text answer."""
    head = [{"role": "system", "content": [text(system)]}] if system else []
    return head + [{"role": "user", "content": user}, {"role": "assistant", "content": [text(answer)]}]


def document(parts: list[dict]) -> list[dict]:
    """A document message list: one message whose parts are text and images in reading order."""
    return [{"role": "document", "content": parts}]


def count_parts(messages: list[dict], part_type: str) -> int:
    """How many content parts of `part_type` the messages hold."""
    return sum(part["type"] == part_type for m in messages for part in m["content"])


def validate(sample: dict) -> None:
    """Raise ValueError naming the first problem found; return None for a well-formed sample.

    Checks the stored fields always and "source" / "skipped_before" / "dropped_before" when present (the reader
    adds them).
    """
    for name in STORED_FIELDS:
        if name not in sample:
            raise ValueError(f"missing field {name!r}")
    key = sample["key"]
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"bad key {key!r}: a non-empty string without '.', '/' or spaces")
    if "source" in sample and not isinstance(sample["source"], str):
        raise ValueError(f"{key}: source must be a string")
    if "skipped_before" in sample and not (
        isinstance(sample["skipped_before"], int) and sample["skipped_before"] >= 0
    ):
        raise ValueError(f"{key}: skipped_before must be a non-negative int")
    dropped = sample.get("dropped_before", {})
    if not isinstance(dropped, dict) or any(not isinstance(n, int) or n < 0 for n in dropped.values()):
        raise ValueError(f"{key}: dropped_before must map names to non-negative ints")
    if sample["type"] not in SAMPLE_TYPES:
        raise ValueError(f"{key}: unknown type {sample['type']!r}, expected one of {SAMPLE_TYPES}")
    if not isinstance(sample["meta"], dict):
        raise ValueError(f"{key}: meta must be a dict")
    _check_messages(key, sample["type"], sample["messages"])
    _check_media(key, sample)
    if sample["type"] == "preference":
        _check_preference(key, sample["meta"])


def _check_messages(key: str, sample_type: str, messages: list) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{key}: messages must be a non-empty list")
    for m in messages:
        if (
            not isinstance(m, dict)
            or "role" not in m
            or not isinstance(m.get("content"), list)
            or not m["content"]
        ):
            raise ValueError(f"{key}: each message needs a role and a non-empty content list")
        for part in m["content"]:
            if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
                raise ValueError(f"{key}: bad content part {part!r}")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"{key}: text part without a string 'text'")
    roles = [m["role"] for m in messages]
    if sample_type in DOCUMENT_TYPES:
        if roles != ["document"]:
            raise ValueError(
                f"{key}: a {sample_type} sample needs exactly one 'document' message, got roles {roles}"
            )
        if count_parts(messages, "video"):
            raise ValueError(f"{key}: document parts are text and images only")
        return
    turns = roles[1:] if roles[0] == "system" else roles
    last = "user" if sample_type == "preference" else "assistant"  # a preference sample is the prompt only
    if not turns or turns[-1] != last or any(r != ("user", "assistant")[i % 2] for i, r in enumerate(turns)):
        expected = "(assistant user)..." if last == "user" else "assistant (user assistant)..."
        raise ValueError(f"{key}: chat roles must be [system] user {expected}, got {roles}")
    for m in messages:
        if m["role"] != "user" and any(part["type"] != "text" for part in m["content"]):
            raise ValueError(f"{key}: only user messages may hold images or videos ({m['role']} does)")
    if sample_type == "reasoning":
        answer = "".join(part["text"] for part in messages[-1]["content"])
        if not answer.startswith("<think>") or "</think>" not in answer:
            raise ValueError(f"{key}: a reasoning answer must read <think>...</think>answer")


def _check_preference(key: str, meta: dict) -> None:
    chosen, rejected = meta.get("chosen"), meta.get("rejected")
    if not (isinstance(chosen, str) and isinstance(rejected, str) and chosen and rejected):
        raise ValueError(f"{key}: a preference sample needs meta['chosen'] and meta['rejected'], non-empty strings")
    if chosen == rejected:
        raise ValueError(f"{key}: meta['chosen'] and meta['rejected'] are the same answer")


def _check_media(key: str, sample: dict) -> None:
    images, videos, messages = sample["images"], sample["videos"], sample["messages"]
    if count_parts(messages, "image") != len(images):
        raise ValueError(f"{key}: {count_parts(messages, 'image')} image parts but {len(images)} images")
    if count_parts(messages, "video") != len(videos):
        raise ValueError(f"{key}: {count_parts(messages, 'video')} video parts but {len(videos)} videos")
    for im in images:
        if not isinstance(im, Image.Image) or im.mode != "RGB":
            raise ValueError(f"{key}: images must be RGB PIL images")
    for v in videos:
        if not isinstance(v, dict) or not {"frames", "timestamps", "fps"} <= v.keys():
            raise ValueError(f"{key}: a video needs frames, timestamps and fps")
        if not v["frames"] or len(v["frames"]) != len(v["timestamps"]):
            raise ValueError(f"{key}: a video needs one timestamp per frame and at least one frame")
        if any(b < a for a, b in zip(v["timestamps"], v["timestamps"][1:])):
            raise ValueError(f"{key}: video timestamps must not decrease")
        if not v["fps"] > 0:
            raise ValueError(f"{key}: video fps must be positive")
        if any(not isinstance(f, Image.Image) or f.mode != "RGB" for f in v["frames"]):
            raise ValueError(f"{key}: video frames must be RGB PIL images")


# A multiple-choice answer as an option letter, however it is written.
_LETTER_ONLY = re.compile(r"\s*\(?\s*([A-Za-z])\s*\)?\s*[.:)]?\s*")


def as_letter(text: str) -> str | None:
    """The option letter when the whole text is one ("B", "b", "(B)", "B.", "B)"), upper-cased; else None."""
    match = _LETTER_ONLY.fullmatch(text)
    return None if match is None else match.group(1).upper()
