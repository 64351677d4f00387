"""LLaVA-style conversations -> "qa" chats.

Accepted layout: a JSON list (or JSONL) of

    {"id": "000000033471",                         # optional, kept as meta["id"]
     "image": "coco/train2017/000000033471.jpg",   # optional: a file or a list of files, under --media-root
     "conversations": [{"from": "human", "value": "<image>\\nWhat is in the picture?"},
                       {"from": "gpt", "value": "A cat."}, ...]}

as in LLaVA-Instruct-150K / llava_v1_5_mix665k and the multi-image LLaVA-NeXT / OneVision data. Turns go
human, gpt, human, gpt, ... (human -> user, gpt -> assistant). Each "<image>" in a human turn becomes an
image part in place, taking the entry's images in order (a newline right before or after a placeholder goes
with it); an entry without "image" is a text-only chat.
Skipped and counted: the number of "<image>" differing from the images ("image_count_mismatch"), a
placeholder in a gpt turn ("image_in_answer"), turns that do not alternate human/gpt or do not end with gpt
("bad_turns"), a missing or unreadable image, a missing field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mimovl.data.convert.common import Counts, Skip, convert_rows, key_stem, load_image, need, read_rows
from mimovl.data.schema import image, text

PLACEHOLDER = re.compile(r"\n?<image>\n?")
ROLES = {"human": "user", "gpt": "assistant"}


def convert(path: str | Path, media_root: str | Path, counts: Counts) -> Iterator[dict]:
    """Schema samples from a LLaVA conversation file (layout in the module docstring)."""
    return convert_rows(read_rows(path), lambda row, key: [_sample(row, key, Path(media_root))], counts,
                        key_stem(path))


def _sample(row: dict, key: str, media_root: Path) -> dict:
    turns = need(row, "conversations", list)
    names = row.get("image") or []
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list):
        raise Skip("missing_field", f"'image' is neither a file name nor a list: {names!r}")
    messages = [_message(turn, i) for i, turn in enumerate(turns)]
    if not messages or messages[-1]["role"] != "assistant":
        raise Skip("bad_turns", "the conversation does not end with a gpt turn")
    placeholders = sum(part["type"] == "image" for m in messages for part in m["content"])
    if placeholders != len(names):
        raise Skip("image_count_mismatch", f"{placeholders} <image> placeholders, {len(names)} images")
    meta = {"id": str(row["id"])} if row.get("id") is not None else {}
    return {
        "key": key,
        "type": "qa",
        "messages": messages,
        "images": [load_image(media_root, name) for name in names],
        "videos": [],
        "meta": meta,
    }


def _message(turn: object, index: int) -> dict:
    role = ROLES.get(need(turn, "from", str))
    if role != ("user", "assistant")[index % 2]:
        raise Skip("bad_turns", f"turn {index} is from {turn['from']!r}; expected human and gpt in turn")
    value = need(turn, "value", str)
    if role == "assistant":
        if PLACEHOLDER.search(value):
            raise Skip("image_in_answer", f"turn {index} (gpt) holds <image>")
        return {"role": role, "content": [text(value)]}
    pieces = PLACEHOLDER.split(value)
    content = [text(pieces[0])] if pieces[0] else []
    for piece in pieces[1:]:
        content.append(image())
        if piece:
            content.append(text(piece))
    return {"role": role, "content": content}
