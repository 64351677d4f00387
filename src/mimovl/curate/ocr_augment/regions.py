"""Box geometry for the OCR augmentations: the pixels a box covers, boxes as non-overlapping mask
channels, the boxes of those regions after a warp, and the integer boxes written back.
"""

from __future__ import annotations

import math

import numpy as np


def _pixel_span(box, width, height) -> tuple[int, int, int, int]:
    """Inclusive pixel ranges a box covers, generously (its right/bottom edge pixel included)."""
    x1, y1, x2, y2 = box
    x1, y1 = min(max(math.floor(x1), 0), width - 1), min(max(math.floor(y1), 0), height - 1)
    x2, y2 = min(max(math.ceil(x2), x1), width - 1), min(max(math.ceil(y2), y1), height - 1)
    return x1, y1, x2, y2


def _regions(boxes, height, width) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(C, H, W) uint8 label channels of the box rectangles, no two overlapping in a channel (<= 255 a
    channel), and each box's (channel, label)."""
    channels: list[np.ndarray] = []
    used: list[int] = []
    where = []
    for box in boxes:
        x1, y1, x2, y2 = _pixel_span(box, width, height)
        for c, ch in enumerate(channels):
            if used[c] < 255 and not ch[y1:y2 + 1, x1:x2 + 1].any():
                break
        else:
            channels.append(np.zeros((height, width), np.uint8))
            used.append(0)
            c = len(channels) - 1
        used[c] += 1
        channels[c][y1:y2 + 1, x1:x2 + 1] = used[c]
        where.append((c, used[c]))
    return np.stack(channels) if channels else np.zeros((1, height, width), np.uint8), where


def _region_boxes(regions: np.ndarray, where) -> list[list[int] | None]:
    """[x1, y1, x2 + 1, y2 + 1] of each box's region pixels (None when none is left)."""
    found = {}
    for c in {c for c, _ in where}:
        ys, xs = np.nonzero(regions[c])
        labels = regions[c][ys, xs]
        for label in np.unique(labels):
            sel = labels == label
            found[(c, int(label))] = [int(xs[sel].min()), int(ys[sel].min()), int(xs[sel].max()) + 1,
                                      int(ys[sel].max()) + 1]
    return [found.get(w) for w in where]


def _still_inside(after, before, size) -> bool:
    """A warped region is kept whole: not empty, and off the image border unless it touched it before."""
    if after is None:
        return False
    height, width = size

    def touched(b) -> bool:
        return b[0] <= 0 or b[1] <= 0 or b[2] >= width or b[3] >= height

    return touched(before) or not touched(after)


def _int_box(box, width, height) -> list[int]:
    x1, y1, x2, y2 = box
    return [max(0, math.floor(x1)), max(0, math.floor(y1)), min(width, math.ceil(x2)), min(height, math.ceil(y2))]
