"""The RL stage's LightningModule: GRPO updates on batches the rollout callback prepares.

`mimovl.rl.callback.RolloutCallback` turns each batch of prompts into packed rollouts with per-token
advantages and aggregation weights; this module computes log-probabilities of the sampled tokens and takes
`epochs x minibatches` optimizer steps on them (one by default: the report's fully on-policy update). It
optimizes manually because one batch may take several optimizer steps.
"""

import copy
import time

import lightning.pytorch as pl
import torch
from transformers import get_constant_schedule_with_warmup

from mimovl.data.encode import IGNORE
from mimovl.model.export import export_hf
from mimovl.model.parts import check_lr, param_groups, set_trainable
from mimovl.rl.grpo import LossConfig, policy_loss
from mimovl.stages.finite import finite_or_none
from mimovl.stages.packed import PackedVLM, token_losses
from mimovl.stages.sharding import shard_model


class GRPOModule(pl.LightningModule):
    """GRPO on a Qwen2.5-VL policy.

    Args:
        model: the policy, a `Qwen2_5_VLForConditionalGeneration`.
        trainable, lr: parts to train and one learning rate per part (as in pre-training).
        loss: `mimovl.rl.grpo.LossConfig` fields (aggregation, clipping, KL, epochs, minibatches).
        temperature: the sampling temperature; log-probabilities are taken of logits / temperature, the
            distribution the responses were drawn from.
        warmup_steps: linear warm-up of the (then constant) learning rate.
        gradient_clip_val: gradient norm clip per optimizer step (None: off); train.py moves the trainer's here.
    """

    def __init__(self, model, trainable: list[str], lr: dict[str, float], loss: dict | None = None,
                 temperature: float = 1.0, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 warmup_steps: int = 0, gradient_clip_val: float | None = 1.0,
                 activation_checkpointing: bool = False):
        super().__init__()
        check_lr(trainable, lr)
        self.save_hyperparameters(ignore=["model"])
        self.automatic_optimization = False
        self.loss_config = LossConfig(**(loss or {}))
        self.gradient_clip_val = gradient_clip_val
        self.net = PackedVLM(model.train())
        set_trainable(model, list(trainable))
        # The frozen starting policy, only when the KL term needs it.
        self.reference = None
        if self.loss_config.kl_coef:
            self.reference = PackedVLM(copy.deepcopy(model).eval().requires_grad_(False))
        if activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.loss_history: list[float] = []
        self.rewards: dict[str, dict | None] = {"before": None, "after": None}  # held-out, set by the callback
        self.rollout_timings: dict = {}

    @property
    def model(self):
        """The policy being trained."""
        return self.net.hf

    @property
    def updates_per_batch(self) -> int:
        """Optimizer steps per rollout batch (train.py scales max_steps by it)."""
        return self.loss_config.epochs * self.loss_config.minibatches

    def configure_model(self) -> None:
        if self.device_mesh is not None:
            param_dtype = torch.bfloat16 if self.trainer.strategy.root_device.type == "cuda" else None
            shard_model(self.net, self.device_mesh["data_parallel"], param_dtype)
            if self.reference is not None:
                shard_model(self.reference, self.device_mesh["data_parallel"], param_dtype)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(param_groups(self.model, dict(self.hparams.lr), self.hparams.weight_decay),
                                      betas=tuple(self.hparams.betas))
        scheduler = get_constant_schedule_with_warmup(optimizer, self.hparams.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def token_logp(self, net: PackedVLM, batch: dict) -> torch.Tensor:
        """log pi of each sampled token, flat over the learned positions (in their order in the batch)."""
        learned = batch["targets"] != IGNORE
        logits = net(batch, learned) / self.hparams.temperature
        return -token_losses(logits, batch["targets"][learned])

    def training_step(self, batch: dict, batch_idx: int) -> None:
        start = time.perf_counter()
        minibatches = batch["minibatches"]
        config = self.loss_config
        # The sampling policy's log-probabilities: needed once a minibatch is revisited after an update.
        old = [None] * len(minibatches)
        if self.updates_per_batch > 1:
            with torch.no_grad():
                old = [self.token_logp(self.net, mb) for mb in minibatches]
        reference = [None] * len(minibatches)
        if self.reference is not None:
            with torch.no_grad():
                reference = [self.token_logp(self.reference, mb) for mb in minibatches]
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        losses, stats = [], {}
        for _ in range(config.epochs):
            for mb, old_logp, ref_logp in zip(minibatches, old, reference):
                learned = mb["targets"] != IGNORE
                logp = self.token_logp(self.net, mb)
                loss, stats = policy_loss(logp, mb["advantages"][learned], mb["coef"][learned], config,
                                          old_logp, ref_logp)
                optimizer.zero_grad()
                self.manual_backward(loss)
                if self.gradient_clip_val:
                    self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val,
                                        gradient_clip_algorithm="norm")
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
        self.loss_history.append(finite_or_none(sum(losses) / len(losses)))  # None: a step NonFiniteGuard skipped
        self.log("train/loss", sum(losses) / len(losses), prog_bar=True, batch_size=1)
        for name, value in stats.items():
            self.log(f"train/{name}", value, batch_size=1)
        tokens = sum(int((mb["targets"] != IGNORE).sum()) for mb in minibatches)
        self.log("train/response_tokens", float(tokens), batch_size=1)
        self.log("time/train", time.perf_counter() - start, batch_size=1)

    def summary(self) -> dict:
        """summary.json figures: losses and the held-out reward per task before and after RL."""
        before, after = self.rewards["before"] or {}, self.rewards["after"] or {}
        finite = [loss for loss in self.loss_history if loss is not None]
        return {
            "first_loss": finite[0] if finite else None,
            "last_loss": finite[-1] if finite else None,
            "loss_history": self.loss_history,
            "reward_before": before,
            "reward_after": after,
            "mean_reward_before": _mean(before),
            "mean_reward_after": _mean(after),
        }

    def headline(self) -> str:
        summary = self.summary()
        return f"held-out reward {summary['mean_reward_before']} -> {summary['mean_reward_after']}"

    def export(self, directory, processor, state_dict: dict) -> None:
        export_hf(self.model, processor, directory, state_dict=state_dict)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mimovl"] = {"loss_history": self.loss_history, "rewards": self.rewards}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("mimovl", {})
        self.loss_history = list(state.get("loss_history", []))
        self.rewards.update(state.get("rewards", {}))


def _mean(values: dict) -> float | None:
    return sum(values.values()) / len(values) if values else None
