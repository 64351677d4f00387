"""Rule-based rewards for the RL stage: one verifier per task, each `(response, answer) -> float`.

    from mimovl.rewards import REWARDS, safe_reward
    REWARDS["counting"]("<think>...</think>3", 3)      # 1.0
    REWARDS["grounding_box"]("[0, 0, 10, 10]", [0, 0, 10, 20], image_size=(640, 480))  # 0.375: IoU (1 + IoU) / 2
    safe_reward(meta["task"], response, meta["answer"], image_size=image_size(sample))

Every verifier reads the final answer (after the last `</think>`; none while a `<think>` is left open),
never raises, returns a Python float in [0, 1] and returns within seconds, from any thread. Answers by task:
math a string (LaTeX allowed), multiple_choice a letter, counting an int, grounding_box and grounding_point
the true box [x1, y1, x2, y2] in absolute pixels, temporal_grounding [start_seconds, end_seconds]. The two
grounding verifiers (SIZED_TASKS) also take `image_size=(width, height)`: boxes are then clipped to the image
and a point off it scores 0 (mimovl.rewards.grounding).
Importing this package is cheap: math-verify (and sympy) load and warm up at the first math reward (~1 s).
`math` forks a child process per call, killed after 3 s (see mimovl.rewards.mathverify for why).
"""

from __future__ import annotations

from mimovl.rewards.choice import multiple_choice_reward
from mimovl.rewards.counting import counting_reward
from mimovl.rewards.grounding import grounding_box_reward, grounding_point_reward, image_size
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
SIZED_TASKS = ("grounding_box", "grounding_point")  # verifiers that take image_size=(width, height)

__all__ = ["REWARDS", "SIZED_TASKS", "TASKS", "image_size", "safe_reward"]


def safe_reward(task: str, response: str, answer, image_size: tuple[int, int] | None = None) -> float:
    """REWARDS[task](response, answer), with `image_size` passed on to the tasks that use it (SIZED_TASKS).
    An unknown task raises KeyError (a config error, not model output)."""
    if task not in REWARDS:
        raise KeyError(f"unknown reward task {task!r}; known tasks: {', '.join(TASKS)}")
    if task in SIZED_TASKS and image_size is not None:
        return REWARDS[task](response, answer, image_size=image_size)
    return REWARDS[task](response, answer)
