"""The Bradley-Terry reward-model LightningModule (stages rm and rm_text).

Trains `mimovl.model.reward.RewardModel` on preference pairs from `mimovl.data.preference`: the loss is
-log sigmoid(r_chosen - r_rejected), averaged over every pair of the optimizer step (all ranks and all
micro-batches of its accumulation window, as in PretrainModule). An optional centring term,
center_coef * (r_chosen + r_rejected)^2, keeps rewards around 0 so that sigmoid(reward) spreads over [0, 1]
instead of drifting to one end (the Bradley-Terry loss alone does not see a shift of every reward).
Reported losses are the Bradley-Terry loss only; the pair accuracy is the share of pairs with
r_chosen > r_rejected. At the end of training the module scores the held-out pairs of its data module
(`PreferenceDataModule.heldout_batches`) the same way: `heldout_accuracy` and `heldout_pairs` in summary.json.
"""

import logging
import math

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device

from mimovl.data.packing import add_counts, dropped_counts, flat_counts
from mimovl.metrics import finite_or_none, global_sum
from mimovl.model.parts import param_groups
from mimovl.model.reward import RewardModel
from mimovl.stages.base import StageModule
from mimovl.stages.optim import warmup_cosine

log = logging.getLogger(__name__)


def pair_losses(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry loss -log sigmoid(chosen - rejected), in float32."""
    return F.softplus(rejected.float() - chosen.float())


def heldout_counts(net, batches: list[dict], rank: int, world_size: int, device) -> tuple[int, int]:
    """(pairs with r_chosen > r_rejected, pairs) of this rank's share of `batches` (batches rank, rank +
    world_size, ...), scored by `net` as it is (the caller sets eval mode and no_grad). Every rank runs the same
    number of forwards, as FSDP2 needs: a rank whose share runs out scores batch 0 again and leaves it out."""
    correct = pairs = 0
    for i in range(rank, math.ceil(len(batches) / world_size) * world_size, world_size):
        batch = move_data_to_device(batches[i if i < len(batches) else 0], device)
        rewards = net(batch).view(-1, 2)
        if i < len(batches):
            correct += int((rewards[:, 0] > rewards[:, 1]).sum())
            pairs += len(rewards)
    return correct, pairs


class RewardModule(StageModule):
    """Bradley-Terry training of a reward model on batches from `PreferenceDataModule`.

    Args:
        model: a `Qwen2_5_VLForConditionalGeneration` (usually the SFT policy); gets a fresh scalar head.
        modality: "vision" or "text", recorded in the export (scorers of a text model refuse media).
        trainable: parts to train, from `mimovl.model.parts.PARTS`; the head always trains.
        lr: learning rate per trainable part; exactly the trainable parts.
        head_lr: the head's learning rate.
        center_coef: weight of the centring term (0 turns it off).
        weight_decay, betas, warmup_ratio, min_lr_ratio, activation_checkpointing: as in PretrainModule.
    """

    def __init__(
        self,
        model,
        trainable: list[str],
        lr: dict[str, float],
        head_lr: float,
        modality: str = "vision",
        center_coef: float = 0.0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.1,
        activation_checkpointing: bool = False,
    ):
        # train(): from_pretrained returns eval mode. Per optimizer step: the global mean loss and pair accuracy;
        # global data counters. Kept in checkpoints.
        super().__init__(RewardModel(model.train(), modality), trainable, lr, activation_checkpointing,
                         history=("loss", "accuracy"),
                         data_counts={"pairs": 0, "skipped": 0, "too_long": 0, "split": 0, "tokens": 0,
                                      "real_tokens": 0, **dropped_counts()})
        self.save_hyperparameters(ignore=["model"])
        self._window = [0.0, 0.0, 0]  # loss sum, correct pairs, micro-batches of the window in progress
        self.heldout = {"heldout_accuracy": None, "heldout_pairs": 0}  # written by on_train_end

    @property
    def model(self) -> RewardModel:
        """The reward model being trained (policy `hf` + `head`); `export` takes its full state dict."""
        return self.net

    def configure_optimizers(self):
        groups = param_groups(self.net.hf, dict(self.hparams.lr), self.hparams.weight_decay)
        groups.append({"name": "head", "params": list(self.net.head.parameters()), "lr": self.hparams.head_lr,
                       "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, betas=tuple(self.hparams.betas))
        return warmup_cosine(optimizer, self.trainer.max_steps, self.hparams.warmup_ratio, self.hparams.min_lr_ratio)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        rewards = self.net(batch).view(-1, 2)  # sequences alternate chosen, rejected (mimovl.data.preference)
        chosen, rejected = rewards[:, 0], rewards[:, 1]
        losses = pair_losses(chosen, rejected)
        segments = batch["segment_ids"]
        local = torch.cat([torch.stack([
            losses.sum().detach().double(), (chosen > rejected).sum().double(),
            (chosen - rejected).sum().detach().double(), batch["window_pairs"].double(), batch["pairs"].double(),
            batch["skipped"].double(), batch["too_long"].double(), batch["split"].double(),
            torch.tensor(segments.numel(), dtype=torch.float64, device=segments.device), (segments > 0).sum().double(),
        ]), batch["dropped"].double()])  # a fixed length (stream.DROPPED), so every rank reduces the same shape
        loss_sum, correct, margin_sum, window, pairs, skipped, too_long, split, tokens, real_tokens, *dropped = (
            global_sum(local).tolist())
        counts = {"pairs": pairs, "skipped": skipped, "too_long": too_long, "split": split, "tokens": tokens,
                  "real_tokens": real_tokens, **dropped_counts(dropped)}
        objective = losses.sum() + self.hparams.center_coef * (chosen + rejected).pow(2).sum()
        # Lightning averages gradients over ranks and divides by the accumulation steps; scaling by both leaves
        # the gradient of (sum over the step's pairs) / (pairs of the whole step).
        objective = objective / max(window, 1.0) * self.trainer.world_size * self.trainer.accumulate_grad_batches
        self.log("train/loss", loss_sum / max(pairs, 1.0), prog_bar=True, batch_size=1)
        self.log("train/accuracy", correct / max(pairs, 1.0), prog_bar=True, batch_size=1)
        self.log("train/margin", margin_sum / max(pairs, 1.0), batch_size=1)
        self.log("train/reward_mean", rewards.detach().mean(), batch_size=1)
        self._record(loss_sum, correct, window, counts)
        return objective

    def _record(self, loss_sum: float, correct: float, window: float, counts: dict) -> None:
        """Adds the micro-batch to its window; at the window's end appends the step's loss and accuracy."""
        self._window = [self._window[0] + loss_sum, self._window[1] + correct, self._window[2] + 1]
        if self._window[2] == self.trainer.accumulate_grad_batches:
            self.history["loss"].append(finite_or_none(self._window[0] / max(window, 1.0)))  # None: skipped
            self.history["accuracy"].append(self._window[1] / max(window, 1.0))
            self._window = [0.0, 0.0, 0]
        self.data_counts = add_counts(self.data_counts, counts)
        for name, value in flat_counts(self.data_counts).items():
            self.log(f"data/{name}", value, batch_size=1)

    def on_train_end(self) -> None:
        """Scores the data module's held-out pairs (each rank its share, in eval mode, without gradients)."""
        batches = self.trainer.datamodule.heldout_batches()
        training = self.net.training
        self.net.eval()
        with torch.no_grad():
            counts = heldout_counts(self.net, batches, self.global_rank, self.trainer.world_size, self.device)
        self.net.train(training)
        correct, pairs = global_sum(torch.tensor(counts, dtype=torch.float64, device=self.device)).tolist()
        self.heldout = {"heldout_accuracy": correct / pairs if pairs else None, "heldout_pairs": int(pairs)}
        log.info("held-out pair accuracy %s on %d pairs", self.heldout["heldout_accuracy"], pairs)

    def summary(self) -> dict:
        """This stage's figures for summary.json: Bradley-Terry loss and pair accuracy per optimizer step, and the
        pair accuracy on held-out pairs after training (None when none were scored)."""
        accuracy = self.history["accuracy"]
        return {
            "modality": self.net.modality,
            **self.loss_summary(),
            "first_accuracy": accuracy[0] if accuracy else None,
            "last_accuracy": accuracy[-1] if accuracy else None,
            "accuracy_history": accuracy,
            **self.heldout,
            **self.data_counts,
        }

    def headline(self) -> str:
        s = self.summary()
        return (f"Bradley-Terry loss {s['first_loss']} -> {s['last_loss']}, "
                f"pair accuracy {s['first_accuracy']} -> {s['last_accuracy']}, "
                f"held-out pair accuracy {s['heldout_accuracy']} ({s['heldout_pairs']} pairs)")

    def export(self, directory, processor, state_dict: dict) -> None:
        """Writes the reward model directory (`mimovl.model.reward`); `state_dict` is `self.model`'s, full."""
        self.net.save(directory, processor, state_dict)
