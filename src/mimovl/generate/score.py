"""Scoring generated text: the reward router built from the `reward` config, and generate-and-score, what
stage=eval and the RL stage's held-out checks both do.

    router = build_router(cfg.reward.models, cfg.reward.timeout, cfg.reward.retries)
    scored = generate_and_score(engine, router, prompts, Sampling(n=1, temperature=0.0), processor)
"""

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mimovl.data.schema import MODALITIES
from mimovl.errors import UsageError
from mimovl.generate.engines import Completion, Sampling
from mimovl.generate.prompts import Prompt
from mimovl.model.reward import HEAD_FILE, RewardModelScorer
from mimovl.rewards.client import HTTPRewardScorer, RewardServiceError
from mimovl.rewards.router import RewardRouter

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 5.0  # a reward service that has not answered /health by then is not there


def build_scorer(path: str | None = None, url: str | None = None, timeout: float = 60.0, retries: int = 3):
    """A reward-model scorer: over HTTP when `url` is set, else in this process from the export at `path`.
    None when neither is given or `path` holds no reward model."""
    if url:
        return HTTPRewardScorer(url, timeout=timeout, retries=retries)
    if path and (Path(path) / HEAD_FILE).exists():
        return RewardModelScorer(path)
    return None


def build_router(models: dict, timeout: float = 60.0, retries: int = 3,
                 health_timeout: float = HEALTH_TIMEOUT_S) -> RewardRouter:
    """The router of `reward.models` ({modality: {path, url}}), logging which reward models it found. A reward
    service (`url`) must answer /health within `health_timeout` seconds, else UsageError naming the key."""
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
    return RewardRouter(scorers)


def _check_service(scorer: HTTPRewardScorer, modality: str, timeout: float) -> None:
    """UsageError unless the service at reward.models.<modality>.url answers, with a model that can score
    `modality` prompts (a text-only reward model cannot score images)."""
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


@dataclass
class Scored:
    """One prompt, its response and the response's reward."""

    prompt: Prompt
    completion: Completion
    reward: float


def generate_and_score(engine, router: RewardRouter, prompts: list[Prompt], sampling: Sampling,
                       processor) -> list[Scored]:
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
