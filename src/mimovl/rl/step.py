"""One RL step, top to bottom: sync -> generate -> score -> dynamic sampling / refill -> release the engine ->
advantages -> batches.

    step = rl_step(weights, engine, router, draw, config, processor, pool, seed=..., any_rank=...)
    step.minibatches    per optimizer step its packed micro-batches (GRPOModule accumulates over them and steps)
    step_metrics(step, config.pass_threshold)   what the step logs: reward, pass rate, length per task and overall

The caller (`mimovl.rl.callback.RolloutCallback`) owns the engine, the router and the easy pool and logs what
this returns; nothing here writes into another object. `RLConfig` holds the settings (conf/rl/grpo.yaml).
"""

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

import torch

from mimovl.errors import UsageError, require
from mimovl.generate.engines import Sampling
from mimovl.generate.prompts import Prompt
from mimovl.rewards import TASKS
from mimovl.rl.batch import rollout_batches
from mimovl.rl.grpo import LossConfig, group_advantages
from mimovl.rl.sampling import EasyPool, collect

KINDS = (*TASKS, "open_text", "open_vision")  # what prompts are, for `rl.tasks` and per-kind metrics


@dataclass
class RLConfig:
    """GRPO settings (conf/rl/grpo.yaml documents each)."""

    group_size: int = 8
    prompts_per_step: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    dynamic_sampling: bool = True
    max_rounds: int = 4
    easy_pool_probability: float = 0.1
    easy_pool_size: int = 1024
    pass_threshold: float = 0.9
    heldout_per_kind: int = 32
    heldout_max_new_tokens: int = 64
    table_every: int = 10
    table_rows: int = 8
    pack_len: int = 1024
    share_prompt: bool = True
    micro_batch_rows: int = 0
    tasks: list[str] | None = None
    update_tokens: int | None = None
    loss: dict = field(default_factory=dict)

    def __post_init__(self):
        at_least = {"group_size": 2, "prompts_per_step": 1, "max_new_tokens": 1, "max_rounds": 1,
                    "heldout_max_new_tokens": 1, "pack_len": 1, "heldout_per_kind": 0, "easy_pool_size": 0,
                    "table_every": 0, "table_rows": 0, "micro_batch_rows": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            why = "GRPO compares at least 2 responses per prompt" if name == "group_size" else f"at least {low}"
            require(isinstance(value, int) and value >= low, f"rl.{name}", value, f"must be an integer, {why}")
        require(self.temperature > 0, "rl.temperature", self.temperature, "must be above 0")
        require(0 < self.top_p <= 1, "rl.top_p", self.top_p, "must be in (0, 1]")
        for name in ("easy_pool_probability", "pass_threshold"):
            require(0 <= getattr(self, name) <= 1, f"rl.{name}", getattr(self, name), "must be in [0, 1]")
        if self.tasks is not None:
            require(isinstance(self.tasks, (list, tuple)) and len(self.tasks) > 0
                    and all(task in KINDS for task in self.tasks), "rl.tasks", self.tasks,
                    f"must be null (every task) or a non-empty list of kinds from {list(KINDS)}")
            self.tasks = list(self.tasks)
        require(self.update_tokens is None or (isinstance(self.update_tokens, int) and self.update_tokens > 0),
                "rl.update_tokens", self.update_tokens, "must be null (no budget) or a positive integer")
        self.loss_config = LossConfig(**self.loss)

    def trains_on(self, prompt: Prompt) -> bool:
        """Whether `rl.tasks` takes this prompt (null: every kind)."""
        return self.tasks is None or prompt.kind in self.tasks

    @classmethod
    def from_config(cls, rl: dict) -> "RLConfig":
        unknown = sorted(set(rl) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(f"rl.{unknown[0]}: not an RL setting (conf/rl/grpo.yaml lists them)")
        return cls(**rl)

    def sampling(self) -> Sampling:
        """How training rollouts are sampled (the seed is set per round)."""
        return Sampling(n=self.group_size, temperature=self.temperature, top_p=self.top_p,
                        max_new_tokens=self.max_new_tokens)


@dataclass
class Group:
    """One prompt, its sampled responses (`Completion`s) and their rewards; `kept`: trained on."""

    prompt: Prompt
    completions: list
    rewards: list[float]
    kept: bool


@dataclass
class Step:
    """What one RL step produced."""

    minibatches: list[list[dict]]                 # per optimizer step its packed micro-batches (CPU), in order
    groups: list[Group]                           # every group sampled (kept and dropped), kept ones first
    timings: dict = field(default_factory=dict)   # seconds of sync, generate, reward; tokens; rounds

    @property
    def kept(self) -> list[Group]:
        return [g for g in self.groups if g.kept]


def rl_step(weights: Callable[[], Iterable] | None, engine, router, draw: Callable[[int], list[Prompt]],
            config: RLConfig, processor, pool: EasyPool, seed: int,
            any_rank: Callable[[bool], bool] = lambda flag: flag) -> Step:
    """One step of on-policy GRPO for this rank.

    Args:
        weights: () -> (name, full tensor) pairs of the policy, pushed into the engine first (None: the engine
            reads the live policy, e.g. transformers generation).
        engine: `generate(prompts, sampling, processor) -> [[Completion]]` (`mimovl.generate.engines`).
        router: `score(prompts, texts) -> [[reward]]` (`mimovl.rewards.router.RewardRouter`).
        draw: k -> the next k prompts of this rank's stream (the step's prompts, then refills).
        pool: the easy-prompt pool, mixed into each round and fed with fully solved prompts.
        seed: this step's sampling seed (each rollout round adds its own offset).
        any_rank: whether a flag is true on any rank (every rank runs the same number of rounds).
    """
    timings = {"sync": 0.0, "generate": 0.0, "reward": 0.0, "tokens": 0, "rounds": 0}
    start = time.perf_counter()
    if weights is not None:
        engine.sync(weights())
    timings["sync"] = time.perf_counter() - start
    sampling = config.sampling()

    def rollout(prompts: list[Prompt]):
        sampling.seed = seed + 10_007 * timings["rounds"]
        start = time.perf_counter()
        completions = engine.generate(prompts, sampling, processor)
        timings["generate"] += time.perf_counter() - start
        timings["tokens"] += sum(len(c.token_ids) for group in completions for c in group)
        start = time.perf_counter()
        rewards = router.score(prompts, [[c.text for c in group] for group in completions])
        timings["reward"] += time.perf_counter() - start
        timings["rounds"] += 1
        return completions, rewards

    need = config.prompts_per_step
    collected = collect(draw(need), rollout, draw, need, config.max_rounds, config.dynamic_sampling, pool,
                        config.pass_threshold, any_rank)
    engine.release()  # the update comes next: vLLM's sleep mode gives its GPU memory to training
    groups = [Group(p, c, r, True) for p, c, r in collected.kept]
    groups += [Group(p, c, r, False) for p, c, r in collected.dropped]
    kept = groups[: len(collected.kept)]
    advantages = group_advantages(torch.tensor([g.rewards for g in kept]), config.loss_config.std_eps)
    minibatches = []
    for part in split(len(kept), config.loss_config.minibatches):
        minibatches.append(rollout_batches([kept[i].prompt for i in part], [kept[i].completions for i in part],
                                           advantages[part], processor, seq_len=config.pack_len,
                                           aggregation=config.loss_config.aggregation,
                                           share_prompt=config.share_prompt,
                                           micro_batch_rows=config.micro_batch_rows))
    return Step(minibatches, groups, timings)


def split(n: int, parts: int) -> list[list[int]]:
    """Indices 0..n-1 in `parts` contiguous, nearly equal, non-empty chunks."""
    parts = max(1, min(parts, n))
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [list(range(bounds[k], bounds[k + 1])) for k in range(parts)]


def step_metrics(step: Step, pass_threshold: float) -> tuple[dict[str, float], dict[str, float]]:
    """(per-kind metrics of the kinds this step drew, overall metrics): mean reward, pass rate (reward >=
    `pass_threshold`), mean response length in tokens, share of responses with a `<think>` part; per kind also
    the share of groups dynamic sampling dropped."""
    by_kind = defaultdict(list)
    for group in step.groups:
        by_kind[group.prompt.kind].append(group)
    per_kind = {}
    for kind, groups in by_kind.items():
        per_kind.update({f"{name}/{kind}": value for name, value in _means(groups, pass_threshold).items()})
        per_kind[f"dropped/{kind}"] = sum(not g.kept for g in groups) / len(groups)
    overall = {f"{name}/mean": value for name, value in _means(step.groups, pass_threshold).items()}
    return per_kind, overall


def _means(groups: list[Group], pass_threshold: float) -> dict[str, float]:
    rewards = [r for g in groups for r in g.rewards]
    completions = [c for g in groups for c in g.completions]
    n = max(len(completions), 1)
    return {"reward": sum(rewards) / max(len(rewards), 1),
            "pass_rate": sum(r >= pass_threshold for r in rewards) / max(len(rewards), 1),
            "length": sum(len(c.token_ids) for c in completions) / n,
            "think": sum(thinks(c.text) for c in completions) / n}


def thinks(text: str) -> bool:
    """Whether a response has a `<think>` part (the reasoning tasks' chain of thought)."""
    return "<think>" in text


def trained_tokens(step: Step) -> int:
    """Response tokens this step trains on (the kept groups'): what `rl.update_tokens` counts."""
    return sum(len(c.token_ids) for g in step.kept for c in g.completions)
