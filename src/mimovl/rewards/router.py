"""The reward router: one call scores a mixed batch, each response by what its prompt asks for.

Prompts with a task (`meta["task"]`) go to the rule of `mimovl.rewards.REWARDS`, all in one call
(`safe_rewards`: the math checks of the batch run in parallel in worker processes); open-ended prompts go to a
Bradley-Terry reward model, the text-only one or the multimodal one by whether the prompt shows an image or
video ("Reward-as-a-Service" in the report: the models may run in this process or behind an HTTP service;
`mimovl.generate.score.build_router` builds a router from the `reward` config).
"""

from collections import defaultdict

from mimovl.rewards import SIZED_TASKS, image_size, safe_rewards


class RewardRouter:
    """Scores groups of responses per prompt.

    Args:
        models: modality ("text", "vision") -> scorer with `score(samples, responses) -> list[float]`; a
            modality without one cannot score open-ended prompts (`can_score` says so).
    """

    def __init__(self, models: dict | None = None):
        self.models = {k: v for k, v in (models or {}).items() if v is not None}

    def can_score(self, prompt) -> bool:
        return prompt.task is not None or prompt.modality in self.models

    def score(self, prompts: list, groups: list[list[str]]) -> list[list[float]]:
        """Rewards in [0, 1], shaped like `groups` (the response texts of each prompt)."""
        rewards = [[0.0] * len(group) for group in groups]
        ruled = []  # [(prompt index, response index)] of the prompts with a task
        open_ended = defaultdict(list)  # modality -> [(prompt index, response index)]
        for p, (prompt, group) in enumerate(zip(prompts, groups)):
            where = ruled if prompt.task is not None else open_ended[prompt.modality]
            where.extend((p, i) for i in range(len(group)))
        sizes = {p: image_size(prompts[p].sample) if prompts[p].task in SIZED_TASKS else None  # boxes are clipped
                 for p in {p for p, _ in ruled}}
        scores = safe_rewards([prompts[p].task for p, _ in ruled], [groups[p][i] for p, i in ruled],
                              [prompts[p].answer for p, _ in ruled], [sizes[p] for p, _ in ruled])
        for (p, i), value in zip(ruled, scores):
            rewards[p][i] = value
        for modality, where in open_ended.items():
            if modality not in self.models:
                raise KeyError(f"an open-ended {modality} prompt, but no {modality} reward model is configured")
            scores = self.models[modality].score([prompts[p].sample for p, _ in where],
                                                 [groups[p][i] for p, i in where])
            for (p, i), value in zip(where, scores):
                rewards[p][i] = min(1.0, max(0.0, float(value)))
        return rewards
