"""Temporal grounding: the IoU of the predicted and the gold segment, in seconds.

Accepts the last `[mm:ss,mm:ss]` of the final answer (also m:ss and hh:mm:ss, spaces allowed, fractions of a
second allowed: parse.last_segment). Scores 0 when there is none, a time is out of range (seconds of 60 or
more), or a segment is inverted (end before start). The gold is [start_seconds, end_seconds].
"""

from __future__ import annotations

import math

from mimovl.rewards.guard import guarded
from mimovl.rewards.parse import final_answer, last_segment


@guarded
def temporal_grounding_reward(response: str, answer) -> float:
    """IoU in [0, 1] of `response`'s segment and `answer` = [start, end] seconds; 0.0 when either is invalid."""
    text = final_answer(response)
    pred = None if text is None else last_segment(text)
    gold = [float(t) for t in answer]
    if pred is None or len(gold) != 2 or not (_valid(pred) and _valid(gold)):
        return 0.0
    inter = max(0.0, min(pred[1], gold[1]) - max(pred[0], gold[0]))
    union = (pred[1] - pred[0]) + (gold[1] - gold[0]) - inter
    return inter / union if union > 0 else 0.0  # two identical instants have no extent: 0


def _valid(segment: list[float]) -> bool:
    start, end = segment
    return math.isfinite(start) and math.isfinite(end) and 0 <= start <= end
