"""Generate once per prompt and score with the reward router: what stage=eval and the RL stage's held-out
checks both do."""

from collections import defaultdict
from dataclasses import dataclass

from mimovl.rl.prompts import Prompt
from mimovl.rl.rollout import Completion, Sampling


@dataclass
class Scored:
    """One prompt, its response and the response's reward."""

    prompt: Prompt
    completion: Completion
    reward: float


def generate_and_score(engine, router, prompts: list[Prompt], sampling: Sampling, processor) -> list[Scored]:
    """One response per prompt (`sampling.n` must be 1), each scored by `router`."""
    if sampling.n != 1:
        raise ValueError("generate_and_score samples one response per prompt")
    if not prompts:
        return []
    groups = engine.generate(prompts, sampling, processor)
    rewards = router.score(prompts, [[c.text for c in g] for g in groups])
    return [Scored(p, g[0], r[0]) for p, g, r in zip(prompts, groups, rewards)]


def sums_by_kind(scored: list[Scored]) -> dict[str, tuple[float, int]]:
    """kind -> (sum of rewards, number of prompts)."""
    sums = defaultdict(lambda: [0.0, 0])
    for row in scored:
        sums[row.prompt.kind][0] += row.reward
        sums[row.prompt.kind][1] += 1
    return {kind: (total, n) for kind, (total, n) in sums.items()}
