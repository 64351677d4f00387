"""Rule-based rewards for the RL stage: one verifier per task, each `(response, answer) -> float`.

    from mimovl.rewards import REWARDS, safe_reward
    REWARDS["counting"]("<think>...</think>3", 3)      # 1.0
    REWARDS["grounding_box"]("[0, 0, 10, 10]", [0, 0, 10, 20], image_size=(640, 480))  # 0.375: IoU (1 + IoU) / 2
    safe_reward(meta["task"], response, meta["answer"], image_size=image_size(sample))
    safe_rewards(tasks, responses, answers, image_sizes)   # a whole batch in one call: math checks in parallel

Every verifier reads the final answer (after the last `</think>`; none while a `<think>` is left open),
never raises, returns a Python float in [0, 1] and returns within seconds, from any thread. Answers by task:
math a string (LaTeX allowed), multiple_choice a letter, counting an int, grounding_box and grounding_point
the true box [x1, y1, x2, y2] in absolute pixels, temporal_grounding [start_seconds, end_seconds]. The two
grounding verifiers (SIZED_TASKS) also take `image_size=(width, height)`: boxes are then clipped to the image
and a point off it scores 0 (mimovl.rewards.grounding).
Importing this package is cheap (no torch, no math-verify). `math` checks run in a pool of long-lived worker
processes, each check killed after 3 s (see mimovl.rewards.mathverify for why); the pool starts at the first
math reward (~2 s: workers import and warm math-verify), or earlier with `start_checks()`.
"""

from __future__ import annotations

from mimovl.rewards.choice import multiple_choice_reward
from mimovl.rewards.counting import counting_reward
from mimovl.rewards.grounding import grounding_box_reward, grounding_point_reward, image_size
from mimovl.rewards.mathverify import CHECKS, math_reward, math_rewards
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

BATCH_REWARDS = {"math": math_rewards}  # tasks scored a batch at a time: (responses, answers) -> [reward]

__all__ = ["REWARDS", "SIZED_TASKS", "TASKS", "image_size", "safe_reward", "safe_rewards", "start_checks"]


def safe_reward(task: str, response: str, answer, image_size: tuple[int, int] | None = None) -> float:
    """REWARDS[task](response, answer), with `image_size` passed on to the tasks that use it (SIZED_TASKS).
    An unknown task raises KeyError (a config error, not model output)."""
    _check_known(task)
    if task in SIZED_TASKS and image_size is not None:
        return REWARDS[task](response, answer, image_size=image_size)
    return REWARDS[task](response, answer)


def safe_rewards(tasks: list[str], responses: list[str], answers: list,
                 image_sizes: list[tuple[int, int] | None] | None = None) -> list[float]:
    """safe_reward of each (task, response, answer, image size), in order, in one call: the math checks of the
    whole batch run in parallel in the pool (BATCH_REWARDS), the other tasks in this process. An unknown task
    raises KeyError before anything is scored."""
    sizes = image_sizes if image_sizes is not None else [None] * len(tasks)
    if not len(tasks) == len(responses) == len(answers) == len(sizes):
        raise ValueError(f"{len(tasks)} tasks, {len(responses)} responses, {len(answers)} answers, {len(sizes)} sizes")
    for task in set(tasks):
        _check_known(task)  # before any scoring
    rewards = [0.0] * len(tasks)
    batched = {task: [i for i, t in enumerate(tasks) if t == task] for task in BATCH_REWARDS}
    for task, where in batched.items():
        scores = BATCH_REWARDS[task]([responses[i] for i in where], [answers[i] for i in where]) if where else []
        for i, value in zip(where, scores):
            rewards[i] = value
    for i, task in enumerate(tasks):
        if task not in BATCH_REWARDS:
            rewards[i] = safe_reward(task, responses[i], answers[i], image_size=sizes[i])
    return rewards


def start_checks() -> None:
    """Starts the worker processes of the math checks now, in the background, instead of at the first math
    reward: call it before something slow (a rollout engine) loads, so that they warm meanwhile."""
    CHECKS.start()


def _check_known(task: str) -> None:
    if task not in REWARDS:
        raise KeyError(f"unknown reward task {task!r}; known tasks: {', '.join(TASKS)}")
