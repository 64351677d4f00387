"""Which groups a step trains on: dynamic sampling and the easy-prompt pool (from MiMo-7B's RL recipe).

Dynamic sampling drops groups whose rewards are all equal: their advantages are all zero, so they would only
dilute the step. The easy pool keeps prompts every response of which passed, and puts one back into a batch
with a small probability, so solved skills are still rehearsed.
"""

import random


def informative(rewards: list[float], tolerance: float = 1e-9) -> bool:
    """Whether a group's rewards differ (zero-variance groups carry no signal)."""
    return max(rewards) - min(rewards) > tolerance


def all_pass(rewards: list[float], threshold: float) -> bool:
    return all(r >= threshold for r in rewards)


class EasyPool:
    """Prompts solved by their whole group, replayed into batches with probability `probability` each.

    Args:
        probability: chance that a batch slot is filled from the pool (report: 0.1).
        capacity: prompts kept (the oldest are dropped first).
        seed: the pool's own random stream (deterministic runs).
    """

    def __init__(self, probability: float = 0.1, capacity: int = 1024, seed: int = 0):
        self.probability, self.capacity = probability, capacity
        self.prompts: list = []
        self.rng = random.Random(seed)

    def add(self, prompt) -> None:
        self.prompts.append(prompt)
        del self.prompts[: max(0, len(self.prompts) - self.capacity)]

    def mix(self, prompts: list) -> list:
        """`prompts` with each slot replaced, with the pool's probability, by a prompt drawn from the pool."""
        if not self.prompts or self.probability <= 0:
            return list(prompts)
        return [self.rng.choice(self.prompts) if self.rng.random() < self.probability else p for p in prompts]

    def __len__(self) -> int:
        return len(self.prompts)
