"""Rule-based rewards for the RL stage: one verifier per task, each `(response, answer) -> float`.

    from mimovl.rewards import REWARDS, safe_reward
    REWARDS["counting"]("<think>...</think>3", 3)      # 1.0
    safe_reward(meta["task"], response, meta["answer"])

Every verifier reads the final answer (after the last `</think>`; none while a `<think>` is left open),
never raises, returns a Python float in [0, 1] and returns within seconds, from any thread. Answers by task:
math a string (LaTeX allowed), multiple_choice a letter, counting an int, grounding_box and grounding_point
the true box [x1, y1, x2, y2] in absolute pixels, temporal_grounding [start_seconds, end_seconds].
Importing this package imports torch and sympy and warms math-verify (a few seconds), so no call pays for it.
`math` forks a child process per call, killed after 3 s (see mimovl.rewards.mathverify for why).
"""

from __future__ import annotations

from mimovl.rewards.choice import multiple_choice_reward
from mimovl.rewards.counting import counting_reward
from mimovl.rewards.grounding import grounding_box_reward, grounding_point_reward
from mimovl.rewards.mathverify import math_reward
from mimovl.rewards.temporal import temporal_grounding_reward

REWARDS = {
    "math": math_reward,
    "multiple_choice": multiple_choice_reward,
    "counting": counting_reward,
    "grounding_box": grounding_box_reward,
    "grounding_point": grounding_point_reward,
    "temporal_grounding": temporal_grounding_reward,
}
TASKS = tuple(REWARDS)


def safe_reward(task: str, response: str, answer) -> float:
    """REWARDS[task](response, answer). An unknown task raises KeyError (a config error, not model output)."""
    if task not in REWARDS:
        raise KeyError(f"unknown reward task {task!r}; known tasks: {', '.join(TASKS)}")
    return REWARDS[task](response, answer)
