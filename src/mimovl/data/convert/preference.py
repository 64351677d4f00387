"""Preference pairs -> "preference" samples for the reward models (mimovl.data.preference).

Accepted layout: JSONL (or a JSON list) of

    {"prompt": "What colour is the car?",
     "image": "imgs/0001.jpg",          # optional, under --media-root; absent or null: a text-only prompt
     "chosen": "It is red.",            # the better answer
     "rejected": "It is blue."}

(the shape of RLAIF-V / VLFeedback / UltraFeedback-binarized after flattening to one pair a row). The sample
is the prompt alone, one user message (the image, then the prompt's text), with meta {"chosen", "rejected"}.
Skipped and counted: identical answers ("same_answers"), a missing or unreadable image, a missing field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mimovl.data.convert.common import Counts, Skip, convert_rows, key_stem, load_image, need, read_rows
from mimovl.data.schema import image, text


def convert(path: str | Path, media_root: str | Path, counts: Counts) -> Iterator[dict]:
    """Schema samples from a preference-pair file (layout in the module docstring)."""
    return convert_rows(read_rows(path), lambda row, key: [_sample(row, key, Path(media_root))], counts,
                        key_stem(path))


def _sample(row: dict, key: str, media_root: Path) -> dict:
    prompt = need(row, "prompt", str)
    chosen, rejected = need(row, "chosen", str), need(row, "rejected", str)
    if chosen.strip() == rejected.strip():
        raise Skip("same_answers", "chosen and rejected are the same answer")
    images = [load_image(media_root, row["image"])] if row.get("image") is not None else []
    return {
        "key": key,
        "type": "preference",
        "messages": [{"role": "user", "content": [image()] * len(images) + [text(prompt)]}],
        "images": images,
        "videos": [],
        "meta": {"chosen": chosen, "rejected": rejected},
    }
