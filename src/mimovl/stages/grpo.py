"""The RL stage's LightningModule: GRPO updates on the step the rollout callback answers each request with.

Each batch is a `RolloutRequest`; `mimovl.rl.callback.RolloutCallback` runs the RL step (`mimovl.rl.step`) when
the training step starts and answers the request with its packed rollouts (per-token advantages and aggregation
weights). This module computes log-probabilities of the sampled tokens and takes `epochs x minibatches`
optimizer steps on them (one by default: the report's fully on-policy update). It optimizes manually because one
batch may take several optimizer steps.
"""

import copy
import time
import warnings

import torch
from transformers import get_constant_schedule_with_warmup

from mimovl.data.encode import IGNORE
from mimovl.metrics import finite_or_none, global_max
from mimovl.model.logits import check_chunk
from mimovl.model.packed import PackedVLM
from mimovl.model.parts import param_groups
from mimovl.rl.data import RolloutRequest
from mimovl.rl.grpo import LossConfig, policy_loss
from mimovl.stages.base import StageModule

# A step's checkpoint holds the weights after its optimizer steps: what a resumed run continues from (it starts at
# the next step; tests/test_rl_resume.py), so Lightning's notice that the state is not the pre-optimization one
# is not news.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")


class GRPOModule(StageModule):
    """GRPO on a Qwen2.5-VL policy.

    Args:
        model: the policy, a `Qwen2_5_VLForConditionalGeneration`.
        trainable, lr: parts to train and one learning rate per part (as in pre-training).
        loss: `mimovl.rl.grpo.LossConfig` fields (aggregation, clipping, KL, epochs, minibatches).
        temperature: the sampling temperature; log-probabilities are taken of logits / temperature, the
            distribution the responses were drawn from.
        warmup_steps: linear warm-up of the (then constant) learning rate.
        gradient_clip_val: gradient norm clip per optimizer step (None: off); train.py moves the trainer's here.
        activation_checkpointing: recompute ViT blocks and decoder layers in the backward pass.
        logits_chunk: tokens of full-vocabulary logits computed at a time for log-probabilities (0: all at once).
    """

    def __init__(self, model, trainable: list[str], lr: dict[str, float], loss: dict | None = None,
                 temperature: float = 1.0, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 warmup_steps: int = 0, gradient_clip_val: float | None = 1.0,
                 activation_checkpointing: bool = False, logits_chunk: int = 0):
        super().__init__(PackedVLM(model.train(), check_chunk(logits_chunk)), trainable, lr,
                         activation_checkpointing)
        self.save_hyperparameters(ignore=["model"])
        self.automatic_optimization = False
        self.loss_config = LossConfig(**(loss or {}))
        self.gradient_clip_val = gradient_clip_val
        # The frozen starting policy, only when the KL term needs it.
        self.reference = None
        if self.loss_config.kl_coef:
            self.reference = PackedVLM(copy.deepcopy(model).eval().requires_grad_(False), logits_chunk)

    @property
    def updates_per_batch(self) -> int:
        """Optimizer steps per rollout batch (train.py scales max_steps by it)."""
        return self.loss_config.epochs * self.loss_config.minibatches

    @property
    def sharded(self) -> list[torch.nn.Module]:
        return [self.net] + ([self.reference] if self.reference is not None else [])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(param_groups(self.model, dict(self.hparams.lr), self.hparams.weight_decay),
                                      betas=tuple(self.hparams.betas))
        scheduler = get_constant_schedule_with_warmup(optimizer, self.hparams.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def token_logp(self, net: PackedVLM, batch: dict) -> torch.Tensor:
        """log pi of each sampled token, flat over the learned positions (in their order in the batch)."""
        return -net(batch, batch["targets"] != IGNORE, losses=True, temperature=self.hparams.temperature)

    def training_step(self, batch: RolloutRequest, batch_idx: int) -> None:
        start = time.perf_counter()
        minibatches = [aligned(mb, lambda n: global_max(n, self.device)) for mb in batch.rollout().minibatches]
        config = self.loss_config
        # The sampling policy's log-probabilities: needed once a minibatch is revisited after an update.
        old = [[None] * len(mb) for mb in minibatches]
        if self.updates_per_batch > 1:
            with torch.no_grad():
                old = [[self.token_logp(self.net, micro) for micro in mb] for mb in minibatches]
        reference = [[None] * len(mb) for mb in minibatches]
        if self.reference is not None:
            with torch.no_grad():
                reference = [[self.token_logp(self.reference, micro) for micro in mb] for mb in minibatches]
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        losses, stats = [], {}
        for _ in range(config.epochs):
            for mb, old_logp, ref_logp in zip(minibatches, old, reference):
                optimizer.zero_grad()
                loss, stats = accumulate(lambda micro: self.token_logp(self.net, micro), mb, config, old_logp,
                                         ref_logp, self.manual_backward)
                if self.gradient_clip_val:
                    self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val,
                                        gradient_clip_algorithm="norm")
                optimizer.step()
                scheduler.step()
                losses.append(loss)
        self.history["loss"].append(finite_or_none(sum(losses) / len(losses)))  # None: a step NonFiniteGuard skipped
        self.log("train/loss", sum(losses) / len(losses), prog_bar=True, batch_size=1)
        for name, value in stats.items():
            self.log(f"train/{name}", value, batch_size=1)
        tokens = sum(int((micro["targets"] != IGNORE).sum()) for mb in minibatches for micro in mb)
        self.log("train/response_tokens", float(tokens), batch_size=1)
        self.log("time/train", time.perf_counter() - start, batch_size=1)

    def summary(self) -> dict:
        """summary.json figures: the loss per rollout step (the held-out rewards are the rollout callback's)."""
        return self.loss_summary()


def accumulate(token_logp, micro_batches: list[dict], config: LossConfig, old: list, reference: list,
               backward) -> tuple[float, dict[str, float]]:
    """Backpropagates the policy loss of one optimizer step, one micro-batch at a time: (the step's loss, its
    stats). Each token's `coef` is normalised over the whole step, so the micro-batch losses add up to it."""
    total, clipped, kl, tokens = 0.0, 0.0, 0.0, 0
    for micro, old_logp, ref_logp in zip(micro_batches, old, reference):
        learned = micro["targets"] != IGNORE
        loss, stats = policy_loss(token_logp(micro), micro["advantages"][learned], micro["coef"][learned], config,
                                  old_logp, ref_logp)
        backward(loss)
        n = int((micro["coef"][learned] != 0).sum())  # padding copies (`aligned`) weigh nothing
        total, tokens = total + float(loss.detach()), tokens + n
        clipped += stats["clipped"] * n
        kl += stats.get("kl", 0.0)
    merged = {"clipped": clipped / max(tokens, 1)}
    if config.kl_coef:
        merged["kl"] = kl
    return total, merged


def aligned(micro_batches: list[dict], most) -> list[dict]:
    """`micro_batches` padded to `most(len(micro_batches))` (the largest count over ranks) with weightless copies
    of the last: under FSDP2 every rank must run as many forwards and backwards as the others."""
    extra = most(len(micro_batches)) - len(micro_batches)
    return micro_batches + [{**micro_batches[-1], "coef": torch.zeros_like(micro_batches[-1]["coef"])}] * extra
