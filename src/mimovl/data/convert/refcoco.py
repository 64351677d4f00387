"""RefCOCO-style referring expressions -> "grounding" chats answered with a box.

Accepted layout: a JSON list (or JSONL) of refs, flattened from the refer toolkit's refs(*).p joined with
instances.json (the ref's annotation box and image file):

    {"image": "COCO_train2014_000000581857.jpg",   # under --media-root
     "bbox": [103.93, 299.99, 134.22, 177.42],     # COCO [x, y, width, height], absolute pixels
     "sentences": ["the lady with the blue shirt", ...],   # or the toolkit's [{"sent": "...", ...}, ...]
     "ref_id": 0}                                  # optional, kept in meta, as is "split"

One sample per sentence (every expression is its own question; they share the image and the box), keyed
`{stem}_{row:08d}_{sentence:02d}`. The box becomes [x1, y1, x2, y2] rounded to whole pixels; the answer reads
"[x1, y1, x2, y2]" and meta holds {"task": "grounding_box", "answer": box, "box": box, "label": sentence}.
Skipped and counted: a box with no area or overhanging the image by more than a pixel ("bad_box",
"box_outside_image"), no sentence, a missing or unreadable image, a missing field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mimovl.data.convert.common import Counts, Skip, convert_rows, key_stem, load_image, need, pixel_box, read_rows
from mimovl.data.schema import chat, image, text

QUESTION = 'Locate "{}" in the image and give its bounding box as [x1, y1, x2, y2].'


def convert(path: str | Path, media_root: str | Path, counts: Counts) -> Iterator[dict]:
    """Schema samples from a flattened RefCOCO / RefCOCO+ / RefCOCOg file (layout in the module docstring)."""
    return convert_rows(read_rows(path), lambda row, key: _samples(row, key, Path(media_root)), counts,
                        key_stem(path))


def _samples(row: dict, key: str, media_root: Path) -> list[dict]:
    sentences = [_sentence(s) for s in need(row, "sentences", list)]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise Skip("missing_field", "no sentence")
    need(row, "bbox", list)
    img = load_image(media_root, need(row, "image", str))
    box = pixel_box(row["bbox"], img.size, xywh=True)
    extra = {name: row[name] for name in ("ref_id", "split") if name in row}
    return [
        {
            "key": f"{key}_{j:02d}",
            "type": "grounding",
            "messages": chat([image(), text(QUESTION.format(sentence))], json.dumps(box)),
            "images": [img],
            "videos": [],
            "meta": {"task": "grounding_box", "answer": box, "box": box, "label": sentence, **extra},
        }
        for j, sentence in enumerate(sentences)
    ]


def _sentence(s: object) -> str:
    if isinstance(s, dict):
        s = s.get("sent") or s.get("raw")
    return s.strip() if isinstance(s, str) else ""
