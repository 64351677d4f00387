"""Counting: 1.0 if the last number of the final answer is exactly the gold integer, else 0.0.

Accepts digits ("3", "There are 3 circles.") and the words zero..twenty ("three"); a decimal ("3.5") or a
number of more than 18 digits as the last number scores 0 (parse.last_int).
"""

from __future__ import annotations

from mimovl.rewards.guard import guarded
from mimovl.rewards.parse import final_answer, last_int


@guarded
def counting_reward(response: str, answer) -> float:
    """1.0 if the last integer in `response`'s final answer equals `answer` (an int, or its digits), else 0.0."""
    text = final_answer(response)
    if text is None:
        return 0.0
    gold = answer if isinstance(answer, int) else int(str(answer).strip())
    return float(last_int(text) == gold)
