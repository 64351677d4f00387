"""Which groups a step trains on: dynamic sampling and the easy-prompt pool (from MiMo-7B's RL recipe).

Dynamic sampling drops groups whose rewards are all equal: their advantages are all zero, so they would only
dilute the step. The easy pool keeps prompts every response of which passed, and puts one back into a batch
with a small probability, so solved skills are still rehearsed.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mimovl.generate.prompts import Prompt


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

    def state_dict(self) -> dict:
        """The pool's prompts (images as PNG bytes) and its random state, for checkpoints."""
        return {"prompts": [prompt.to_state() for prompt in self.prompts], "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.prompts = [Prompt.from_state(p) for p in state["prompts"]]
        self.rng.setstate(state["rng"])


@dataclass
class Collected:
    """What `collect` gathered: the groups to train on, and every group seen (for per-kind metrics)."""

    kept: list = field(default_factory=list)      # (prompt, group, rewards), informative first-come
    dropped: list = field(default_factory=list)   # (prompt, group, rewards) with all rewards equal
    rounds: int = 0


def collect(prompts: list, rollout: Callable, draw: Callable, need: int, max_rounds: int, dynamic: bool = True,
            pool: EasyPool | None = None, pass_threshold: float = 1.0,
            more_anywhere: Callable[[bool], bool] = lambda flag: flag) -> Collected:
    """Rollout rounds until `need` groups are kept or `max_rounds` ran.

    rollout(prompts) -> (groups, rewards) samples and scores one round; draw(k) -> k fresh prompts refills the
    groups dynamic sampling dropped (with `dynamic` off every group is kept). Prompts whose whole group passes
    go to `pool`, which also mixes its prompts into each round. `more_anywhere(flag)` says whether any rank
    still needs a round (every rank runs the same number). With nothing kept, the first dropped group is
    kept (zero advantages) so the step still runs. Returns at most `need` kept groups.
    """
    result = Collected()
    for _ in range(max_rounds):
        if pool is not None:
            prompts = pool.mix(prompts)
        groups, rewards = rollout(prompts)
        result.rounds += 1
        for prompt, group, reward in zip(prompts, groups, rewards):
            if pool is not None and all_pass(reward, pass_threshold):
                pool.add(prompt)
            (result.kept if informative(reward) or not dynamic else result.dropped).append((prompt, group, reward))
        missing = need - len(result.kept)
        if not more_anywhere(missing > 0):
            break
        prompts = draw(max(missing, 1))
    if not result.kept:
        result.kept = result.dropped[:1]
    result.kept = result.kept[:need]
    return result
