"""Multiple choice: 1.0 if the final answer picks the gold option letter (case-insensitive), else 0.0.

Accepts "B", "(B)", "B.", "b", "The answer is B", `\\boxed{B}`; text naming several options scores its last
one (the rule: parse.choice_letter). The gold is a letter, optionally as "(B)" or "B.".
"""

from __future__ import annotations

from mimovl.rewards.guard import guarded
from mimovl.data.schema import as_letter
from mimovl.rewards.parse import choice_letter, final_answer


@guarded
def multiple_choice_reward(response: str, answer) -> float:
    """1.0 if `response` picks option `answer` (a letter), else 0.0."""
    text = final_answer(response)
    gold = as_letter(str(answer))
    if text is None or gold is None:
        return 0.0
    return float(choice_letter(text) == gold)
