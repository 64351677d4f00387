"""OBELICS / MMC4-style interleaved web documents -> "interleaved" documents.

Accepted layouts: JSONL (or a JSON list), one document a row, in either form:

    OBELICS  {"texts": ["A title", null, "A paragraph."], "images": [null, "img/0001.jpg", null], ...}
             aligned lists: at each position exactly one of the two is non-null.
    MMC4     {"text_list": ["First sentence.", "Second sentence."],
              "image_info": [{"image_name": "abc.jpg", "matched_text_index": 1, ...}], ...}
             each image goes right before the sentence it is matched to (images matched to one sentence keep
             their order in image_info).

Image entries are file names under --media-root (download the URLs first). Consecutive texts are joined
into one text part, OBELICS paragraphs with a blank line ("\\n\\n"), MMC4 sentences with a space.
A document is all or nothing: one missing or unreadable image skips it (counted), as do misaligned lists
("misaligned"), a document without images ("no_images") or a row in neither layout ("missing_field").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mimovl.data.convert.common import Counts, Skip, convert_rows, key_stem, load_image, need, read_rows
from mimovl.data.schema import document, image, text

PARAGRAPH_SEPARATOR = "\n\n"  # OBELICS texts are paragraphs
SENTENCE_SEPARATOR = " "  # MMC4 texts are sentences


def convert(path: str | Path, media_root: str | Path, counts: Counts) -> Iterator[dict]:
    """Schema samples from an OBELICS or MMC4 file (layouts in the module docstring)."""
    return convert_rows(read_rows(path), lambda row, key: [_sample(row, key, Path(media_root))], counts,
                        key_stem(path))


def _sample(row: dict, key: str, media_root: Path) -> dict:
    if isinstance(row, dict) and "text_list" in row:
        items, separator = _mmc4_items(row), SENTENCE_SEPARATOR
    else:
        items, separator = _obelics_items(row), PARAGRAPH_SEPARATOR
    names = [value for kind, value in items if kind == "image"]
    if not names:
        raise Skip("no_images", "the document has no image")
    parts: list[dict] = []
    for kind, value in items:
        if kind == "image":
            parts.append(image())
        elif parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += separator + value
        else:
            parts.append(text(value))
    return {
        "key": key,
        "type": "interleaved",
        "messages": document(parts),
        "images": [load_image(media_root, name) for name in names],
        "videos": [],
        "meta": {},
    }


def _obelics_items(row: dict) -> list[tuple[str, str]]:
    """[("text", paragraph) | ("image", file name)] in reading order."""
    texts, images = need(row, "texts", list), need(row, "images", list)
    if len(texts) != len(images):
        raise Skip("misaligned", f"{len(texts)} texts but {len(images)} images")
    items = []
    for i, (t, name) in enumerate(zip(texts, images)):
        if (t is None) == (name is None):
            raise Skip("misaligned", f"position {i} holds {'both' if t is not None else 'neither'} text and image")
        if name is not None:
            items.append(("image", name))
        elif not isinstance(t, str):
            raise Skip("missing_field", f"texts[{i}] is not a string: {t!r}")
        elif t.strip():
            items.append(("text", t))
    return items


def _mmc4_items(row: dict) -> list[tuple[str, str]]:
    """[("text", sentence) | ("image", file name)] with each image before its matched sentence."""
    sentences, infos = need(row, "text_list", list), need(row, "image_info", list)
    before: dict[int, list[str]] = {}
    for info in infos:
        index = need(info, "matched_text_index", int)
        if not 0 <= index < len(sentences):
            raise Skip("misaligned", f"matched_text_index {index} with {len(sentences)} sentences")
        before.setdefault(index, []).append(need(info, "image_name", str))
    items = []
    for i, sentence in enumerate(sentences):
        items += [("image", name) for name in before.get(i, [])]
        if not isinstance(sentence, str):
            raise Skip("missing_field", f"text_list[{i}] is not a string: {sentence!r}")
        if sentence.strip():
            items.append(("text", sentence))
    return items
