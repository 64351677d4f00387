"""The on-policy phase of each RL step, as a Lightning callback.

Before every training step (`on_train_batch_start`) it runs one RL step (`mimovl.rl.step.rl_step`: sync the
policy's weights into the engine, sample G responses per prompt, score them, drop groups whose rewards are all
equal and refill, advantages, packed batches), logs what the step reports, and answers the step's
`RolloutRequest` with it: `mimovl.stages.grpo.GRPOModule.training_step` trains on `request.step`. At the start
and the end of the fit it scores held-out prompts greedily; `summary()` puts both in summary.json.
"""

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.distributed.tensor import DTensor

from mimovl.generate.engines import Sampling
from mimovl.generate.score import build_router, generate_and_score
from mimovl.metrics import any_rank, global_sum, log_present
from mimovl.model.export import export_hf
from mimovl.model.sharding import full_state_dict
from mimovl.outputs import write_text
from mimovl.rewards import start_checks
from mimovl.rl.data import RolloutRequest
from mimovl.rl.sampling import EasyPool
from mimovl.rl.step import KINDS, RLConfig, rl_step, step_metrics, thinks, trained_tokens

log = logging.getLogger(__name__)
HELDOUT = ("reward", "length", "think")  # what held-out scoring measures per kind


class RolloutCallback(pl.Callback):
    """Runs the RL step for `GRPOModule` and reports it.

    Args:
        rl: the `rl` config (fields of `RLConfig`; an unknown key fails loudly).
        engine: a factory `(policy, export, distributed) -> engine` (`VLLMRollout.from_policy`,
            `HFRollout.from_policy`), from the `rollout` config group.
        reward: the `reward` config: {models: {text: {path, url}, vision: {path, url}}, timeout, retries}.
        workdir: where the starting policy is exported for the engine and sample rollouts are written.
        seed: base seed of sampling (each step, round and rank gets its own).
    """

    def __init__(self, rl: dict, engine, reward: dict, workdir: str, seed: int = 0):
        self.config = RLConfig.from_config(rl)
        self.engine_factory, self.reward_config = engine, reward
        self.workdir, self.seed = Path(workdir), seed
        self.engine = self.router = self.processor = None
        self.pool = EasyPool(self.config.easy_pool_probability, self.config.easy_pool_size, seed)
        # held-out figures (HELDOUT) per kind before and after RL; per step what it logged; tokens trained on
        self.heldout: dict[str, dict | None] = {"before": None, "after": None}
        self.history: list[dict] = []
        self.trained_tokens = 0

    # ---- set-up and held-out scoring ----

    def on_fit_start(self, trainer: pl.Trainer, module) -> None:
        start_checks()  # the math checks' worker pool warms while the engine loads
        reward = self.reward_config
        self.router = build_router(reward["models"], reward.get("timeout", 60.0), reward.get("retries", 3))
        self.processor = trainer.datamodule.processor
        self.engine = self.engine_factory(
            policy=module.model, export=lambda: self._export_start(trainer, module),
            distributed=trainer.world_size > 1,
        )

    def on_train_start(self, trainer: pl.Trainer, module) -> None:
        # Here, not in on_fit_start: a checkpoint is fully restored (FSDP2 restores after on_fit_start).
        if trainer.is_global_zero:
            self._drop_rows_from(trainer.global_step)
        self.history = [row for row in self.history if row["step"] < trainer.global_step]
        self._sync(module)
        if self.heldout["before"] is None:  # a resumed run keeps the score of its real start
            self.heldout["before"] = self.score_heldout(trainer)
            log.info("held-out before RL: %s", self.heldout["before"])

    def on_fit_end(self, trainer: pl.Trainer, module) -> None:
        self._sync(module)
        self.heldout["after"] = self.score_heldout(trainer)
        log.info("held-out after RL: %s", self.heldout["after"])

    def state_dict(self) -> dict:
        return {"easy_pool": self.pool.state_dict(), "heldout": self.heldout, "history": self.history,
                "trained_tokens": self.trained_tokens}

    def load_state_dict(self, state: dict) -> None:
        if "easy_pool" in state:
            self.pool.load_state_dict(state["easy_pool"])
        self.heldout.update(state.get("heldout", {}))
        self.history = list(state.get("history", []))
        self.trained_tokens = int(state.get("trained_tokens", 0))

    def summary(self) -> dict:
        """summary.json's held-out figures per task before and after RL (reward, and their means; response
        length in tokens; share of responses with a `<think>` part), the tokens trained on, and per step the
        metrics it logged (`history`)."""
        figures = {}
        for when in ("before", "after"):
            per_kind = self.heldout[when] or {}
            for name in HELDOUT:
                figures[f"{name}_{when}"] = {kind: row[name] for kind, row in per_kind.items()}
            figures[f"mean_reward_{when}"] = _mean(figures[f"reward_{when}"])
        return {**figures, "trained_tokens": self.trained_tokens, "history": self.history}

    def headline(self) -> str:
        summary = self.summary()
        return f"held-out reward {summary['mean_reward_before']} -> {summary['mean_reward_after']}"

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

    def _export_start(self, trainer: pl.Trainer, module) -> Path:
        """The starting policy as a Qwen2.5-VL directory (written by rank 0; every rank reads it)."""
        directory = self.workdir / "rollout_start"
        state = full_state_dict(module.model)  # a collective under FSDP2
        if trainer.is_global_zero:
            export_hf(module.model, self.processor, directory, state_dict=state)
        trainer.strategy.barrier()
        return directory

    def _accept(self, prompt) -> bool:
        """Prompts this run trains and is scored on: something can score them, and `rl.tasks` takes them."""
        return self.router.can_score(prompt) and self.config.trains_on(prompt)

    def score_heldout(self, trainer: pl.Trainer) -> dict[str, dict[str, float]]:
        """Per kind, over the held-out prompts (all ranks' shares together), greedy answers' mean reward,
        length in tokens and share with a `<think>` part (HELDOUT)."""
        sampling = Sampling(n=1, temperature=0.0, max_new_tokens=self.config.heldout_max_new_tokens)
        prompts = trainer.datamodule.heldout(self._accept)
        scored = generate_and_score(self.engine, self.router, prompts, sampling, self.processor)
        sums = torch.zeros(len(HELDOUT) + 1, len(KINDS), dtype=torch.float64)  # HELDOUT's sums, then counts
        for row in scored:
            figures = (row.reward, len(row.completion.token_ids), thinks(row.completion.text), 1)
            sums[:, KINDS.index(row.prompt.kind)] += torch.tensor(figures, dtype=torch.float64)
        sums = global_sum(sums, trainer.strategy.root_device)
        return {kind: {name: float(sums[i, k] / sums[-1, k]) for i, name in enumerate(HELDOUT)}
                for k, kind in enumerate(KINDS) if sums[-1, k] > 0}

    # ---- one step ----

    def _weights(self, module):
        """The policy's weights for the engine, or None when the engine reads the live policy."""
        if not self.engine.needs_weights:
            return None
        return lambda: _full_tensors(module.net)

    def _sync(self, module) -> None:
        weights = self._weights(module)
        if weights is not None:
            self.engine.sync(weights())

    def on_train_batch_start(self, trainer: pl.Trainer, module, batch: RolloutRequest, batch_idx: int) -> None:
        data, device = trainer.datamodule, trainer.strategy.root_device
        seed = self.seed + 1_000_003 * (trainer.global_step + 1) + 101 * trainer.global_rank
        step = rl_step(self._weights(module), self.engine, self.router,
                       lambda k: data.draw(k, self._accept), self.config, self.processor, self.pool,
                       seed=seed, any_rank=lambda flag: any_rank(flag, device))
        step.minibatches = [[trainer.strategy.batch_to_device(micro) for micro in mb] for mb in step.minibatches]
        batch.answer(step)
        self._log(module, step)
        # Each rank rolls out its own prompts; rollouts.jsonl is rank 0's alone, so say per rank what it trained on.
        log.debug("step %d, rank %d trains on %s", trainer.global_step, trainer.global_rank,
                  json.dumps([g.prompt.key for g in step.kept]))
        if trainer.is_global_zero and self.config.table_every and trainer.global_step % self.config.table_every == 0:
            self._write_samples(trainer, step.kept)

    def on_train_batch_end(self, trainer: pl.Trainer, module, outputs, batch: RolloutRequest, batch_idx: int) -> None:
        """Counts the tokens trained on (all ranks) and stops the fit once `rl.update_tokens` are spent."""
        device = trainer.strategy.root_device
        self.trained_tokens += int(global_sum(torch.tensor(float(trained_tokens(batch.rollout())),
                                                           dtype=torch.float64), device).item())
        self.history[-1]["trained_tokens"] = self.trained_tokens
        budget = self.config.update_tokens
        if budget is not None and self.trained_tokens >= budget:
            log.info("rl.update_tokens=%d spent (%d tokens trained on) after step %d: stopping", budget,
                     self.trained_tokens, trainer.global_step)
            trainer.should_stop = True

    # ---- what it reports ----

    def _log(self, module, step) -> None:
        per_kind, overall = step_metrics(step, self.config.pass_threshold)
        log_present(module, per_kind)  # only the kinds this step drew: no stale values for the others
        self.history.append({"step": module.trainer.global_step, **overall, **per_kind})
        for name, value in overall.items():
            module.log(name, value, prog_bar=True, batch_size=1)
        timings = step.timings
        for name in ("sync", "generate", "reward"):
            module.log(f"time/{name}", timings[name], batch_size=1)
        module.log("rollout/tokens_per_sec", timings["tokens"] / max(timings["generate"], 1e-9), batch_size=1)
        module.log("rollout/rounds", float(timings["rounds"]), batch_size=1)
        module.log("rollout/easy_pool", float(len(self.pool)), batch_size=1)

    def _write_samples(self, trainer, groups: list) -> None:
        """A few rollouts of this step: appended to <workdir>/rollouts.jsonl, and a W&B table when logging there."""
        rows = []
        for group in groups[: self.config.table_rows]:
            prompt = group.prompt
            rows.append({"step": trainer.global_step, "kind": prompt.kind, "key": prompt.key,
                         "question": _question(prompt), "answer": json.dumps(prompt.answer),
                         "response": group.completions[0].text, "reward": group.rewards[0],
                         "image": _first_image(prompt)})
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


def _question(prompt) -> str:
    last = prompt.sample["messages"][-1]["content"]
    return " ".join(part["text"] for part in last if part["type"] == "text")


def _first_image(prompt):
    if prompt.sample.get("images"):
        return prompt.sample["images"][0]
    if prompt.sample.get("videos"):
        return prompt.sample["videos"][0]["frames"][0]
    return None


def _mean(values: dict) -> float | None:
    return sum(values.values()) / len(values) if values else None
