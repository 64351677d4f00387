"""The on-policy phase of each RL step, as a Lightning callback.

Before every training step (`on_train_batch_start`) it pushes the policy's weights into the rollout engine,
samples G responses per prompt, scores them with the reward router, drops groups whose rewards are all equal
(refilling from the prompt stream), computes group advantages and replaces the batch of prompts with the
packed training batch that `mimovl.stages.grpo.GRPOModule.training_step` consumes. At the start and the end
of the fit it scores held-out prompts greedily; the module records both for summary.json.
"""

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from mimovl.errors import UsageError, require
from mimovl.eval.score import generate_and_score, sums_by_kind
from mimovl.model.export import export_hf
from mimovl.outputs import write_text
from mimovl.rewards import TASKS
from mimovl.rewards.router import RewardRouter
from mimovl.rl.batch import rollout_batch
from mimovl.rl.grpo import LossConfig, group_advantages
from mimovl.rl.rollout import Sampling
from mimovl.rl.sampling import EasyPool, collect
from mimovl.stages.sharding import full_state_dict
from mimovl.stages.sparse import log_present

log = logging.getLogger(__name__)
KINDS = (*TASKS, "open_text", "open_vision")  # what per-kind metrics are logged under


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
    loss: dict = field(default_factory=dict)

    def __post_init__(self):
        at_least = {"group_size": 2, "prompts_per_step": 1, "max_new_tokens": 1, "max_rounds": 1,
                    "heldout_max_new_tokens": 1, "pack_len": 1, "heldout_per_kind": 0, "easy_pool_size": 0,
                    "table_every": 0, "table_rows": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            why = "GRPO compares at least 2 responses per prompt" if name == "group_size" else f"at least {low}"
            require(isinstance(value, int) and value >= low, f"rl.{name}", value, f"must be an integer, {why}")
        require(self.temperature > 0, "rl.temperature", self.temperature, "must be above 0")
        require(0 < self.top_p <= 1, "rl.top_p", self.top_p, "must be in (0, 1]")
        for name in ("easy_pool_probability", "pass_threshold"):
            require(0 <= getattr(self, name) <= 1, f"rl.{name}", getattr(self, name), "must be in [0, 1]")

    @classmethod
    def from_config(cls, rl: dict) -> "RLConfig":
        unknown = sorted(set(rl) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(f"rl.{unknown[0]}: not an RL setting (conf/rl/grpo.yaml lists them)")
        return cls(**rl)


class RolloutCallback(pl.Callback):
    """Drives rollouts for `GRPOModule`.

    Args:
        rl: the `rl` config (fields of `RLConfig`; an unknown key fails loudly).
        engine: a factory `(policy, export, distributed) -> engine` (`VLLMRollout.from_policy`,
            `HFRollout.from_policy`), from the `rollout` config group.
        reward: the `reward` config: {models: {text: {path, url}, vision: {path, url}}, timeout, retries}.
        workdir: where the starting policy is exported for the engine and sample rollouts are written.
        seed: base seed of sampling (each step and round gets its own).
    """

    def __init__(self, rl: dict, engine, reward: dict, workdir: str, seed: int = 0):
        self.config = RLConfig.from_config(rl)
        self.loss = LossConfig(**self.config.loss)
        self.engine_factory, self.reward_config = engine, reward
        self.workdir, self.seed = Path(workdir), seed
        self.engine = self.router = None
        self.pool = EasyPool(self.config.easy_pool_probability, self.config.easy_pool_size, seed)

    # ---- set-up and held-out scoring ----

    def on_fit_start(self, trainer: pl.Trainer, module) -> None:
        reward = self.reward_config
        self.router = RewardRouter.from_config(reward["models"], reward.get("timeout", 60.0), reward.get("retries", 3))
        data = trainer.datamodule
        data.accept = self.router.can_score
        self.processor = data.processor
        self.engine = self.engine_factory(
            policy=module.model, export=lambda: self._export_start(trainer, module),
            distributed=trainer.world_size > 1,
        )

    def on_train_start(self, trainer: pl.Trainer, module) -> None:
        # Here, not in on_fit_start: a checkpoint is fully restored (FSDP2 restores after on_fit_start).
        if trainer.is_global_zero:
            self._drop_rows_from(trainer.global_step)
        self._sync(module)
        if module.rewards.get("before") is None:  # a resumed run keeps the score of its real start
            module.rewards["before"] = self.score_heldout(trainer)
            log.info("held-out reward before RL: %s", module.rewards["before"])

    def state_dict(self) -> dict:
        return {"easy_pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "easy_pool" in state:
            self.pool.load_state_dict(state["easy_pool"])

    def _drop_rows_from(self, step: int) -> None:
        """Removes sample rollouts of steps >= `step` from rollouts.jsonl: a run killed after its last checkpoint
        wrote rows for steps the resumed run does again."""
        path = self.workdir / "rollouts.jsonl"
        if not path.exists():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] < step]
        if len(kept) != len(lines):
            write_text(path, "".join(kept))

    def on_fit_end(self, trainer: pl.Trainer, module) -> None:
        self._sync(module)
        module.rewards["after"] = self.score_heldout(trainer)
        log.info("held-out reward after RL: %s", module.rewards["after"])

    def _export_start(self, trainer: pl.Trainer, module) -> Path:
        """The starting policy as a Qwen2.5-VL directory (written by rank 0; every rank reads it)."""
        directory = self.workdir / "rollout_start"
        state = full_state_dict(module.model)  # a collective under FSDP2
        if trainer.is_global_zero:
            export_hf(module.model, self.processor, directory, state_dict=state)
        trainer.strategy.barrier()
        return directory

    def score_heldout(self, trainer: pl.Trainer) -> dict[str, float]:
        """Mean greedy reward per kind on the held-out prompts (all ranks' shares together)."""
        sampling = Sampling(n=1, temperature=0.0, max_new_tokens=self.config.heldout_max_new_tokens)
        scored = generate_and_score(self.engine, self.router, trainer.datamodule.heldout(), sampling, self.processor)
        sums = torch.zeros(2, len(KINDS), dtype=torch.float64)
        for kind, (total, n) in sums_by_kind(scored).items():
            sums[:, KINDS.index(kind)] = torch.tensor([total, n], dtype=torch.float64)
        sums = _global_sum(sums, trainer)
        return {kind: float(sums[0, k] / sums[1, k]) for k, kind in enumerate(KINDS) if sums[1, k] > 0}

    # ---- one step ----

    def _sync(self, module) -> float:
        """Pushes the policy's weights into the engine; returns the seconds it took."""
        start = time.perf_counter()
        if getattr(self.engine, "needs_weights", True):
            self.engine.sync(_full_tensors(module.net))
        return time.perf_counter() - start

    def on_train_batch_start(self, trainer: pl.Trainer, module, batch: dict, batch_idx: int) -> None:
        timings = {"sync": self._sync(module), "rounds": 0}
        kept, stats = self._collect(trainer, trainer.datamodule.draw(batch["prompts"]), timings)
        prompts, groups, rewards = (list(x) for x in zip(*kept))
        advantages = group_advantages(torch.tensor(rewards), self.loss.std_eps)
        minibatches = []
        for part in _split(len(prompts), self.loss.minibatches):
            mb = rollout_batch([prompts[i] for i in part], [groups[i] for i in part], advantages[part],
                               self.processor, seq_len=self.config.pack_len, aggregation=self.loss.aggregation)
            minibatches.append(trainer.strategy.batch_to_device(mb))
        batch.clear()
        batch["minibatches"] = minibatches
        module.rollout_timings = timings
        self._log(module, stats, timings)
        # Each rank rolls out its own prompts; rollouts.jsonl is rank 0's alone, so say per rank what it trained on.
        log.debug("step %d, rank %d trains on %s", trainer.global_step, trainer.global_rank,
                  json.dumps([p.key for p in prompts]))
        if trainer.is_global_zero and self.config.table_every and trainer.global_step % self.config.table_every == 0:
            self._write_samples(trainer, prompts, groups, rewards)

    def _collect(self, trainer, prompts: list, timings: dict) -> tuple[list, dict]:
        """The groups to train on (`mimovl.rl.sampling.collect`), and every group seen per kind for metrics."""
        config = self.config
        sampling = Sampling(n=config.group_size, temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens)
        timings.update(generate=0.0, reward=0.0, tokens=0)

        def rollout(prompts):
            sampling.seed = (self.seed + 1_000_003 * (trainer.global_step + 1) + 10_007 * timings["rounds"]
                             + 101 * trainer.global_rank)
            start = time.perf_counter()
            groups = self.engine.generate(prompts, sampling, self.processor)
            timings["generate"] += time.perf_counter() - start
            timings["tokens"] += sum(len(c.token_ids) for g in groups for c in g)
            start = time.perf_counter()
            rewards = self.router.score(prompts, [[c.text for c in g] for g in groups])
            timings["reward"] += time.perf_counter() - start
            timings["rounds"] += 1
            return groups, rewards

        result = collect(prompts, rollout, trainer.datamodule.draw, len(prompts), config.max_rounds,
                         config.dynamic_sampling, self.pool, config.pass_threshold,
                         lambda flag: _any_rank(flag, trainer))
        stats = defaultdict(list)
        for rows, useful in ((result.kept, True), (result.dropped, False)):
            for prompt, group, reward in rows:
                stats[prompt.kind].append((reward, group, useful))
        return result.kept, stats

    # ---- what it reports ----

    def _log(self, module, stats: dict, timings: dict) -> None:
        per_kind = {}  # only the kinds this step drew (log_present: no stale values for the others)
        for kind, rows in stats.items():
            rewards = [r for reward, _, _ in rows for r in reward]
            lengths = [len(c.token_ids) for _, group, _ in rows for c in group]
            per_kind[f"reward/{kind}"] = sum(rewards) / len(rewards)
            per_kind[f"pass_rate/{kind}"] = sum(r >= self.config.pass_threshold for r in rewards) / len(rewards)
            per_kind[f"length/{kind}"] = sum(lengths) / len(lengths)
            per_kind[f"dropped/{kind}"] = sum(not useful for _, _, useful in rows) / len(rows)
        log_present(module, per_kind)
        all_rewards = [r for rows in stats.values() for reward, _, _ in rows for r in reward]
        lengths = [len(c.token_ids) for rows in stats.values() for _, group, _ in rows for c in group]
        module.log("reward/mean", sum(all_rewards) / max(len(all_rewards), 1), prog_bar=True, batch_size=1)
        module.log("pass_rate/mean", sum(r >= self.config.pass_threshold for r in all_rewards)
                   / max(len(all_rewards), 1), prog_bar=True, batch_size=1)
        module.log("length/mean", sum(lengths) / max(len(lengths), 1), prog_bar=True, batch_size=1)
        for name in ("sync", "generate", "reward"):
            module.log(f"time/{name}", timings[name], batch_size=1)
        module.log("rollout/tokens_per_sec", timings["tokens"] / max(timings["generate"], 1e-9), batch_size=1)
        module.log("rollout/rounds", float(timings["rounds"]), batch_size=1)
        module.log("rollout/easy_pool", float(len(self.pool)), batch_size=1)

    def _write_samples(self, trainer, prompts, groups, rewards) -> None:
        """A few rollouts of this step: appended to <workdir>/rollouts.jsonl, and a W&B table when logging there."""
        rows = []
        for prompt, group, reward in list(zip(prompts, groups, rewards))[: self.config.table_rows]:
            rows.append({"step": trainer.global_step, "kind": prompt.kind, "key": prompt.key,
                         "question": _question(prompt), "answer": json.dumps(prompt.answer),
                         "response": group[0].text, "reward": reward[0], "image": _first_image(prompt)})
        with open(self.workdir / "rollouts.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps({k: v for k, v in row.items() if k != "image"}) + "\n")
        for logger in trainer.loggers:
            if type(logger).__name__ != "WandbLogger":
                continue
            import wandb

            columns = [k for k in rows[0] if k != "image"] + ["image"]
            data = [[row[k] for k in columns[:-1]] + [wandb.Image(row["image"]) if row["image"] else None]
                    for row in rows]
            logger.log_table(key="rollouts", columns=columns, data=data, step=trainer.global_step)


def _full_tensors(net):
    """(name, full tensor) of every weight, gathering shards one tensor at a time (collective under FSDP2)."""
    for name, tensor in net.state_dict().items():
        yield name, tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _split(n: int, parts: int) -> list[list[int]]:
    """Indices 0..n-1 in `parts` contiguous, nearly equal, non-empty chunks."""
    parts = max(1, min(parts, n))
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [list(range(bounds[k], bounds[k + 1])) for k in range(parts)]


def _global_sum(value: torch.Tensor, trainer) -> torch.Tensor:
    if trainer.world_size > 1 and dist.is_initialized():
        value = value.to(trainer.strategy.root_device)
        dist.all_reduce(value)
    return value.cpu()


def _any_rank(flag: bool, trainer) -> bool:
    return bool(_global_sum(torch.tensor([float(flag)]), trainer)[0] > 0)


def _question(prompt) -> str:
    last = prompt.sample["messages"][-1]["content"]
    return " ".join(part["text"] for part in last if part["type"] == "text")


def _first_image(prompt):
    if prompt.sample.get("images"):
        return prompt.sample["images"][0]
    if prompt.sample.get("videos"):
        return prompt.sample["videos"][0]["frames"][0]
    return None
