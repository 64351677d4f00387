"""Grounding: a box scored by its size-matched GIoU with the gold box, or a point by whether it hits the gold box.

Boxes are `[x1, y1, x2, y2]` in absolute pixels. A predicted box is the last four-number `[x1, y1, x2, y2]` of
the final answer (JSON such as `{"bbox_2d": [...]}` included); a point the last `[x, y]` or `(x, y)` (JSON such
as `{"action": "click", "point": [x, y]}` included). Inverted (x2 < x1 or y2 < y1), non-finite, or absurd boxes
(a coordinate beyond +-MAX_COORD pixels), predicted or gold, score 0.

Given `image_size=(width, height)` (PIL's `Image.size`; `image_size(sample)` reads it from a prompt sample),
both boxes are clipped to the image `[0, 0, width, height]` first and a point off the image scores 0. Without
it, coordinates are taken as given.
"""

from __future__ import annotations

import math

from mimovl.rewards.guard import guarded
from mimovl.rewards.parse import final_answer, last_box, last_point

MAX_COORD = 100_000.0  # pixels; no image is this large, so such a coordinate is garbage


@guarded
def grounding_box_reward(response: str, answer, image_size: tuple[float, float] | None = None) -> float:
    """Size-matched GIoU of `response`'s box and the gold box `answer`, both clipped to the image when
    `image_size` is given:

        r = (1 + GIoU) / 2 * min(A_pred, A_gold) / max(A_pred, A_gold)

    with A the (clipped) areas. 0.0 when either box is invalid or has no area (after clipping).

    Why this mapping (GIoU = IoU - (C - U) / C, C the enclosing box's area, U the union's):
    - r is in [0, 1], and 1 only for the same box: GIoU is in [-1, 1] and 1 only for equal boxes, and the size
      ratio is in (0, 1].
    - No box that contains the gold one, or lies inside it, earns more than its IoU: then C = U, so GIoU = IoU,
      and the size ratio is small / large = intersection / union = IoU, so r = IoU * (1 + IoU) / 2 <= IoU. A box
      over the whole image earns at most area(gold) / area(image), a tiny box inside the gold one likewise,
      where (GIoU + 1) / 2 paid at least 1/2 for any box containing the gold one.
    - Disjoint misses are still ranked, which RL needs to learn boxes from scratch (max(0, GIoU) gave them all
      0): for two boxes of area A that do not overlap, U = 2A and r = A / C, which falls as they move apart
      (1/2 when they touch). A large box far away earns little, its (1 + GIoU) / 2 times the size ratio: any
      box k times larger or smaller than the gold one earns at most 1 / k.
    """
    text = final_answer(response)
    pred = None if text is None else last_box(text)
    gold = [float(v) for v in answer]
    if pred is None or not (_valid(pred) and _valid(gold)):
        return 0.0
    if image_size is not None:
        pred, gold = _clip(pred, image_size), _clip(gold, image_size)
    areas = _area(pred), _area(gold)
    if min(areas) <= 0:
        return 0.0
    import torch  # here: the workers of mimovl.rewards.pool import this package and need no torch
    from torchvision.ops import generalized_box_iou

    boxes = torch.tensor([pred, gold], dtype=torch.float64)
    giou = generalized_box_iou(boxes[:1], boxes[1:])[0, 0].item()
    return (1.0 + giou) / 2.0 * min(areas) / max(areas)


@guarded
def grounding_point_reward(response: str, answer, image_size: tuple[float, float] | None = None) -> float:
    """1.0 if `response`'s point lies inside the gold box `answer` (edges included) and, when `image_size` is
    given, on the image; else 0.0."""
    text = final_answer(response)
    point = None if text is None else last_point(text)
    gold = [float(v) for v in answer]
    if point is None or not _valid(gold):
        return 0.0
    x, y = point
    if image_size is not None and not (0 <= x <= image_size[0] and 0 <= y <= image_size[1]):
        return 0.0
    return float(gold[0] <= x <= gold[2] and gold[1] <= y <= gold[3])


def image_size(sample: dict) -> tuple[int, int] | None:
    """(width, height) of the one image, or the one video's frames, that a prompt sample shows; None when it
    shows none or several (a box then cannot say which it is in)."""
    images, videos = sample.get("images") or [], sample.get("videos") or []
    if len(images) + len(videos) != 1:
        return None
    return tuple(images[0].size) if images else tuple(videos[0]["frames"][0].size)


def _valid(box: list[float]) -> bool:
    return (
        len(box) == 4
        and all(math.isfinite(v) and abs(v) <= MAX_COORD for v in box)
        and box[0] <= box[2]
        and box[1] <= box[3]
    )


def _clip(box: list[float], size: tuple[float, float]) -> list[float]:
    width, height = float(size[0]), float(size[1])
    return [min(max(v, 0.0), limit) for v, limit in zip(box, (width, height, width, height))]


def _area(box: list[float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])
