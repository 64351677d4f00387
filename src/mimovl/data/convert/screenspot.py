"""ScreenSpot-style GUI grounding -> "gui" chats answered with a click at the target's centre.

Accepted layout: a JSON list (or JSONL) as in SeeClick's screenspot_{mobile,desktop,web}.json (and the v2 files):

    {"img_filename": "mobile_8dbbc8a5-....png",   # under --media-root (SeeClick: screenspot_imgs/)
     "bbox": [42, 1102, 197, 70],                  # [x, y, width, height], absolute pixels
     "instruction": "view the details of the item",
     "data_type": "text", "data_source": "ios"}    # optional, kept in meta

ScreenSpot's bbox is [x, y, w, h]: SeeClick's own evaluation (pretrain/screenspot_test.py) turns it into
[x, y, x + w, y + h]. ScreenSpot-Pro's annotations give [x1, y1, x2, y2] instead: convert those with
box_format="xyxy" (CLI --box-format xyxy).
The box becomes integer [x1, y1, x2, y2]; the answer reads '{"action": "click", "point": [cx, cy]}' (its rounded
centre) and meta holds {"task": "grounding_point", "answer": box, "box": box, "action": "click", "point": ...}.
Skipped and counted: a box with no area or outside the image, a missing or unreadable image, a missing field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mimovl.data.convert.common import Counts, convert_rows, key_stem, load_image, need, pixel_box, read_rows
from mimovl.data.schema import chat, image, text

BOX_FORMATS = ("xywh", "xyxy")
QUESTION = 'Click on the element for this instruction: "{}".'


def convert(
    path: str | Path, media_root: str | Path, counts: Counts, box_format: str = "xywh"
) -> Iterator[dict]:
    """Schema samples from a ScreenSpot annotation file (layout in the module docstring)."""
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format {box_format!r}: one of {BOX_FORMATS}")
    return convert_rows(
        read_rows(path), lambda row, key: [_sample(row, key, Path(media_root), box_format == "xywh")], counts,
        key_stem(path),
    )


def _sample(row: dict, key: str, media_root: Path, xywh: bool) -> dict:
    instruction = need(row, "instruction", str).strip()
    need(row, "bbox", list)
    img = load_image(media_root, need(row, "img_filename", str))
    box = pixel_box(row["bbox"], img.size, xywh=xywh)
    point = [round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2)]
    extra = {name: row[name] for name in ("data_type", "data_source") if name in row}
    meta = {"task": "grounding_point", "answer": box, "box": box, "action": "click", "point": point, **extra}
    answer = json.dumps({"action": "click", "point": point})
    return {
        "key": key,
        "type": "gui",
        "messages": chat([image(), text(QUESTION.format(instruction))], answer),
        "images": [img],
        "videos": [],
        "meta": meta,
    }
