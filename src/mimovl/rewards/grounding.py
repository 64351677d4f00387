"""Grounding: a box scored by GIoU against the gold box, or a point scored by whether it hits the gold box.

Boxes are `[x1, y1, x2, y2]` in absolute pixels, taken as given (no rescaling). A predicted box is the last
four-number `[x1, y1, x2, y2]` of the final answer (JSON such as `{"bbox_2d": [...]}` included); a point the
last `[x, y]` or `(x, y)` (JSON such as `{"action": "click", "point": [x, y]}` included). Inverted
(x2 < x1 or y2 < y1), non-finite, or absurd boxes (a coordinate beyond +-MAX_COORD pixels), either
predicted or gold, score 0.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import generalized_box_iou

from mimovl.rewards.guard import guarded
from mimovl.rewards.parse import final_answer, last_box, last_point

MAX_COORD = 100_000.0  # pixels; no image is this large, so such a coordinate is garbage


@guarded
def grounding_box_reward(response: str, answer) -> float:
    """(GIoU + 1) / 2 of `response`'s box and the gold box `answer`: 1.0 for the same box, 0.5 for boxes that
    touch, towards 0 for far-apart ones; 0.0 when either box is invalid."""
    text = final_answer(response)
    pred = None if text is None else last_box(text)
    gold = [float(v) for v in answer]
    if pred is None or not (_valid(pred) and _valid(gold)):
        return 0.0
    boxes = torch.tensor([pred, gold], dtype=torch.float64)
    giou = generalized_box_iou(boxes[:1], boxes[1:])[0, 0].item()  # NaN for two empty boxes: the guard -> 0
    return (giou + 1) / 2


@guarded
def grounding_point_reward(response: str, answer) -> float:
    """1.0 if `response`'s point lies inside the gold box `answer` (edges included), else 0.0."""
    text = final_answer(response)
    point = None if text is None else last_point(text)
    gold = [float(v) for v in answer]
    if point is None or not _valid(gold):
        return 0.0
    x, y = point
    return float(gold[0] <= x <= gold[2] and gold[1] <= y <= gold[3])


def _valid(box: list[float]) -> bool:
    return (
        len(box) == 4
        and all(math.isfinite(v) and abs(v) <= MAX_COORD for v in box)
        and box[0] <= box[2]
        and box[1] <= box[3]
    )
