"""What every converter shares: skip reasons and their counts, reading JSON / JSONL rows, loading images, boxes.

A converter turns each input entry (a JSON row, a text line) into schema samples with a `make(row, key)`
function and hands its rows to `convert_rows`, which validates the samples, counts what was read, written and
skipped (by reason), and logs each skip. Nothing an input entry holds can stop a conversion: a bad entry raises
`Skip(reason)`, and any other exception is counted too (as "error_<ExceptionName>").
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mimovl.data.schema import validate

log = logging.getLogger(__name__)


class Skip(Exception):
    """An input entry that cannot become a sample; `reason` is the short name it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class Counts:
    """What a conversion did: entries read, samples written, entries skipped by reason.

    One entry may give several samples (refcoco: one per sentence), so read != written + skipped in general.
    """

    read: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        """Count one skipped entry and log where it was and why."""
        self.skipped[reason] += 1
        log.warning("%s skipped (%s)%s", where, reason, f": {detail}" if detail else "")

    def summary(self) -> str:
        """One line: 'read 10, wrote 8, skipped 2 (broken_json 1, image_missing 1)'."""
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items()))
        total = sum(self.skipped.values())
        return f"read {self.read}, wrote {self.written}, skipped {total}" + (f" ({reasons})" if reasons else "")


def convert_rows(
    rows: Iterable[tuple[str, object]], make: Callable[[object, str], list[dict]], counts: Counts, stem: str
) -> Iterator[dict]:
    """Yield the validated samples `make(row, key)` builds from each `(where, row)`; count and log the rest.

    A row that is a Skip (a line that failed to parse) is counted as such. Keys are `{stem}_{index:08d}`
    (index: the row's position), so they stay the same when a conversion is rerun on the same input.
    """
    for index, (where, row) in enumerate(rows):
        counts.read += 1
        try:
            if isinstance(row, Skip):
                raise row
            samples = make(row, f"{stem}_{index:08d}")
            for sample in samples:
                try:
                    validate(sample)
                except ValueError as exn:
                    raise Skip("invalid_sample", str(exn)) from exn
        except Skip as skip:
            counts.skip(skip.reason, where, skip.detail)
            continue
        except Exception as exn:  # never fatal: an entry nobody foresaw is still only one entry
            counts.skip(f"error_{type(exn).__name__}", where, str(exn))
            continue
        counts.written += len(samples)
        yield from samples


def key_stem(path: str | Path) -> str:
    """The key prefix for samples converted from `path`: its file stem with only [A-Za-z0-9_-] left."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem)


def read_rows(path: str | Path) -> Iterator[tuple[str, object]]:
    """(where, row) for each row of a JSON list file or a JSONL file (one JSON value a line).

    A file whose first non-blank character is "[" is a JSON list; anything else is JSONL. A JSONL line that
    fails to parse comes as (where, Skip("broken_json")); a JSON list file that fails to parse (or is not a
    list) comes as one (where, Skip("broken_json_file")). Blank lines are ignored.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith("["):
            try:
                rows = json.load(f)
                if not isinstance(rows, list):
                    raise ValueError("not a JSON list")
            except ValueError as exn:
                yield path.name, Skip("broken_json_file", str(exn))
                return
            for i, row in enumerate(rows):
                yield f"{path.name}[{i}]", row
            return
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path.name}:{lineno}", json.loads(line)
            except ValueError as exn:
                yield f"{path.name}:{lineno}", Skip("broken_json", str(exn))


def need(row: object, name: str, kind: type | tuple[type, ...]) -> object:
    """row[name], which must be a `kind` (and, if a string, not blank); else Skip("missing_field") naming it."""
    if not isinstance(row, dict):
        raise Skip("missing_field", f"the entry is a {type(row).__name__}, not an object")
    value = row.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise Skip("missing_field", f"{name!r} missing, empty or not {_kind_name(kind)}: {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def load_image(media_root: Path, name: object) -> Image.Image:
    """The RGB image at media_root / name, fully decoded; Skip("image_missing" | "image_unreadable") if not."""
    if not isinstance(name, str) or not name:
        raise Skip("missing_field", f"image name {name!r} is not a file name")
    path = Path(media_root) / name
    if not path.is_file():
        raise Skip("image_missing", str(path))
    try:
        with Image.open(path) as img:
            img.load()  # decode everything now: a truncated file fails here, not in a training step
            return img.convert("RGB")
    except Exception as exn:  # PIL raises OSError, ValueError, SyntaxError... for bad files
        raise Skip("image_unreadable", f"{path}: {type(exn).__name__}: {exn}") from exn


def xywh_to_xyxy(box: list[float]) -> list[float]:
    """COCO [x, y, width, height] -> [x1, y1, x2, y2]."""
    x, y, w, h = box
    return [x, y, x + w, y + h]


BOX_TOLERANCE = 1.0  # pixels a box may overhang its image (float rounding in the source) before it is skipped


def pixel_box(box: object, size: tuple[int, int], xywh: bool) -> list[int]:
    """A source box as integer [x1, y1, x2, y2] pixels inside an image of `size` (width, height).

    Rounds to the nearest pixel and clips an overhang of up to BOX_TOLERANCE; raises Skip("bad_box") for
    anything but four numbers with x2 > x1 and y2 > y1, Skip("box_outside_image") for a larger overhang.
    """
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise Skip("bad_box", f"{box!r} is not four numbers")
    x1, y1, x2, y2 = xywh_to_xyxy(box) if xywh else box
    if not (x2 > x1 and y2 > y1):
        raise Skip("bad_box", f"{box!r} has no area")
    width, height = size
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise Skip("box_outside_image", f"{box!r} in a {width}x{height} image")
    return [
        min(max(round(x1), 0), width), min(max(round(y1), 0), height),
        min(max(round(x2), 0), width), min(max(round(y2), 0), height),
    ]


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
