"""The cross-entropy LightningModule of pre-training stages 1-4 and SFT.

What a stage trains is configuration (conf/stage/*.yaml): which parts are trainable, one learning rate per
part, warm-up + cosine. Frozen parts stay out of the optimizer, so they stay bit-identical. The loss is the
mean over every learned token of the optimizer step: all ranks and all micro-batches of its gradient
accumulation window. So one process with batch 2B, two processes with batch B and one process accumulating two
batches of B all compute the same update.
"""

import torch

from mimovl.data.encode import IGNORE
from mimovl.data.packing import add_counts, dropped_counts, flat_counts
from mimovl.data.schema import SAMPLE_TYPES
from mimovl.metrics import finite_or_none, global_sum, log_present
from mimovl.model.logits import check_chunk
from mimovl.model.packed import PackedVLM
from mimovl.model.parts import param_groups
from mimovl.stages.base import StageModule
from mimovl.stages.optim import warmup_cosine


class PretrainModule(StageModule):
    """Next-token cross-entropy on packed batches from `mimovl.data.datamodule`.

    Args:
        model: a `Qwen2_5_VLForConditionalGeneration`.
        trainable: parts to train, from `mimovl.model.parts.PARTS` (vit, projector, llm).
        lr: learning rate per trainable part; exactly the trainable parts.
        weight_decay, betas: AdamW settings.
        warmup_ratio: share of the steps spent in linear warm-up.
        min_lr_ratio: where the cosine ends, as a share of each part's lr.
        activation_checkpointing: recompute ViT blocks and decoder layers in the backward pass.
        logits_chunk: tokens of full-vocabulary logits computed at a time in the loss (0: all at once).
    """

    def __init__(
        self,
        model,
        trainable: list[str],
        lr: dict[str, float],
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.1,
        activation_checkpointing: bool = False,
        logits_chunk: int = 0,
    ):
        # train(): from_pretrained returns eval mode. The history is the global mean loss per optimizer step; the
        # data counters are global (positions trained on, real tokens among them, corrupt and too-long samples
        # skipped, long documents split, skips by reason, shard read errors). Both are kept in checkpoints.
        super().__init__(PackedVLM(model.train(), check_chunk(logits_chunk)), trainable, lr, activation_checkpointing,
                         data_counts={"skipped": 0, "too_long": 0, "split": 0, "tokens": 0, "real_tokens": 0,
                                      **dropped_counts()})
        self.save_hyperparameters(ignore=["model"])
        self._window_loss_sum, self._micro_batches = 0.0, 0  # the accumulation window in progress

    def configure_optimizers(self):
        groups = param_groups(self.model, dict(self.hparams.lr), self.hparams.weight_decay)
        optimizer = torch.optim.AdamW(groups, betas=tuple(self.hparams.betas))
        return warmup_cosine(optimizer, self.trainer.max_steps, self.hparams.warmup_ratio, self.hparams.min_lr_ratio)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        learned = batch["targets"] != IGNORE
        losses = self.net(batch, learned, losses=True)
        # One all-reduce for everything the step reports: loss sum, learned tokens, and the data counters.
        segments = batch["segment_ids"]
        local = torch.cat([torch.stack([
            losses.sum().detach().double(), learned.sum().double(), batch["window_tokens"].double(),
            batch["skipped"].double(),
            batch["too_long"].double(), batch["split"].double(),
            torch.tensor(segments.numel(), dtype=torch.float64, device=segments.device),
            (segments > 0).sum().double(),
        ]), batch["dropped"].double()])  # a fixed length (stream.DROPPED), so every rank reduces the same shape
        loss_sum, count, window, skipped, too_long, split, tokens, real_tokens, *dropped = global_sum(local).tolist()
        counts = {"skipped": skipped, "too_long": too_long, "split": split, "tokens": tokens,
                  "real_tokens": real_tokens, **dropped_counts(dropped)}
        # Lightning averages gradients over ranks and divides each micro-batch loss by the accumulation steps;
        # scaling by both leaves the gradient of (sum of token losses) / (learned tokens of the whole step).
        loss = losses.sum() / max(window, 1.0) * self.trainer.world_size * self.trainer.accumulate_grad_batches
        self._record(loss_sum, count, window, counts)
        self._log_per_type(batch["type_ids"][learned], losses.detach())
        return loss

    def _record(self, loss_sum: float, count: float, window: float, counts: dict) -> None:
        """Logs the micro-batch's global loss and counters; keeps each optimizer step's loss in loss_history."""
        self.log("train/loss", loss_sum / max(count, 1.0), prog_bar=True, batch_size=1)
        self._window_loss_sum += loss_sum
        self._micro_batches += 1
        if self._micro_batches == self.trainer.accumulate_grad_batches:
            self.history["loss"].append(finite_or_none(self._window_loss_sum / max(window, 1.0)))  # None: skipped
            self._window_loss_sum, self._micro_batches = 0.0, 0
        self.data_counts = add_counts(self.data_counts, counts)
        for name, value in flat_counts(self.data_counts).items():
            self.log(f"data/{name}", value, batch_size=1)
        self.log("train/packing_efficiency", counts["real_tokens"] / max(counts["tokens"], 1.0), batch_size=1)

    def _log_per_type(self, type_ids: torch.Tensor, losses: torch.Tensor) -> None:
        """This rank's mean loss per sample type present in the micro-batch (absent types get no value)."""
        log_present(self, {f"train/loss_{name}": losses[type_ids == index].mean()
                           for index, name in enumerate(SAMPLE_TYPES) if (type_ids == index).any()})

    def summary(self) -> dict:
        """This stage's figures for summary.json: losses per optimizer step and the data counters."""
        return {**self.loss_summary(), **self.data_counts}
