"""The reward router: one call scores a mixed batch, each response by what its prompt asks for.

Prompts with a task (`meta["task"]`) go to the rule of `mimovl.rewards.REWARDS`; open-ended prompts go to a
Bradley-Terry reward model, the text-only one or the multimodal one by whether the prompt shows an image or
video ("Reward-as-a-Service" in the report: the models may run in this process or behind an HTTP service).
"""

import logging
from collections import defaultdict
from pathlib import Path

from mimovl.errors import UsageError
from mimovl.rewards import SIZED_TASKS, image_size, safe_reward

log = logging.getLogger(__name__)
MODALITIES = ("text", "vision")
HEALTH_TIMEOUT_S = 5.0  # a reward service that has not answered /health by then is not there


def build_scorer(path: str | None = None, url: str | None = None, timeout: float = 60.0, retries: int = 3):
    """A reward-model scorer: over HTTP when `url` is set, else in this process from the export at `path`.
    None when neither is given or `path` holds no reward model."""
    if url:
        from mimovl.rewards.service import HTTPRewardScorer

        return HTTPRewardScorer(url, timeout=timeout, retries=retries)
    if path and (Path(path) / "reward_head.safetensors").exists():
        from mimovl.rewards.models import RewardModelScorer

        return RewardModelScorer(path)
    return None


class RewardRouter:
    """Scores groups of responses per prompt.

    Args:
        models: modality ("text", "vision") -> scorer with `score(samples, responses) -> list[float]`; a
            modality without one cannot score open-ended prompts (`can_score` says so).
    """

    def __init__(self, models: dict | None = None):
        self.models = {k: v for k, v in (models or {}).items() if v is not None}

    @classmethod
    def from_config(cls, models: dict, timeout: float = 60.0, retries: int = 3,
                    health_timeout: float = HEALTH_TIMEOUT_S) -> "RewardRouter":
        """From `reward.models` ({modality: {path, url}}), logging which reward models it found. A reward service
        (`url`) must answer /health within `health_timeout` seconds, else UsageError naming the key."""
        scorers = {}
        for modality, where in models.items():
            if modality not in MODALITIES:
                raise KeyError(f"reward.models.{modality}: the modalities are {MODALITIES}")
            scorers[modality] = build_scorer(where.get("path"), where.get("url"), timeout, retries)
            if where.get("url"):
                _check_service(scorers[modality], modality, health_timeout)
            if scorers[modality] is None:
                log.warning("no %s reward model (reward.models.%s: %s): open-ended %s prompts are skipped; train "
                            "one with stage=%s", modality, modality, dict(where), modality,
                            "rm_text" if modality == "text" else "rm")
        return cls(scorers)

    def can_score(self, prompt) -> bool:
        return prompt.task is not None or prompt.modality in self.models

    def score(self, prompts: list, groups: list[list[str]]) -> list[list[float]]:
        """Rewards in [0, 1], shaped like `groups` (the response texts of each prompt)."""
        rewards = [[0.0] * len(group) for group in groups]
        open_ended = defaultdict(list)  # modality -> [(prompt index, response index)]
        for p, (prompt, group) in enumerate(zip(prompts, groups)):
            if prompt.task is not None:
                size = image_size(prompt.sample) if prompt.task in SIZED_TASKS else None  # boxes are clipped to it
                rewards[p] = [safe_reward(prompt.task, text, prompt.answer, image_size=size) for text in group]
            else:
                open_ended[prompt.modality].extend((p, i) for i in range(len(group)))
        for modality, where in open_ended.items():
            if modality not in self.models:
                raise KeyError(f"an open-ended {modality} prompt, but no {modality} reward model is configured")
            scores = self.models[modality].score([prompts[p].sample for p, _ in where],
                                                 [groups[p][i] for p, i in where])
            for (p, i), value in zip(where, scores):
                rewards[p][i] = min(1.0, max(0.0, float(value)))
        return rewards


def _check_service(scorer, modality: str, timeout: float) -> None:
    """UsageError unless the service at reward.models.<modality>.url answers, with a model that can score
    `modality` prompts (a text-only reward model cannot score images)."""
    from mimovl.rewards.service import RewardServiceError

    key = f"reward.models.{modality}.url"
    try:
        info = scorer.health(timeout=timeout)
    except RewardServiceError as exn:
        raise UsageError(f"{key}={scorer.url}: {exn} Fix {key}, or set it to null to score with "
                         f"reward.models.{modality}.path in this process.") from exn
    if modality == "vision" and info.get("modality") == "text":
        raise UsageError(f"{key}={scorer.url} serves the text-only reward model {info.get('model')}, which cannot "
                         f"score images: point {key} at a service started with a stage=rm export")
    log.info("%s: reward service of %s (%s) answers", key, info.get("model"), info.get("modality"))
