"""The cross-entropy LightningModule of pre-training stages 1-4 and SFT.

What a stage trains is configuration (conf/stage/*.yaml): which parts are trainable, one learning rate per
part, warm-up + cosine. Frozen parts stay out of the optimizer, so they stay bit-identical. The loss is the
mean over every learned token of the global batch (all ranks), so one process with batch 2B and two
processes with batch B compute the same update. With gradient accumulation, each micro-batch is such a mean
and the step averages them (micro-batches are weighted equally, not by their token counts).
"""

import math

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from mimovl.data.encode import IGNORE
from mimovl.data.schema import SAMPLE_TYPES
from mimovl.model.parts import param_groups, set_trainable
from mimovl.stages.packed import PackedVLM, token_losses
from mimovl.stages.sharding import shard_model


class PretrainModule(pl.LightningModule):
    """Next-token cross-entropy on packed batches from `mimovl.data.datamodule`.

    Args:
        model: a `Qwen2_5_VLForConditionalGeneration`.
        trainable: parts to train, from `mimovl.model.parts.PARTS` (vit, projector, llm).
        lr: learning rate per trainable part; exactly the trainable parts.
        weight_decay, betas: AdamW settings.
        warmup_ratio: share of the steps spent in linear warm-up.
        min_lr_ratio: where the cosine ends, as a share of each part's lr.
        activation_checkpointing: recompute ViT blocks and decoder layers in the backward pass.
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
    ):
        super().__init__()
        if set(lr) != set(trainable):
            raise ValueError(
                f"stage.module.lr must give one learning rate per trainable part: trainable={list(trainable)},"
                f" lr has {sorted(lr)}"
            )
        self.save_hyperparameters(ignore=["model"])
        self.net = PackedVLM(model.train())  # train(): from_pretrained returns eval mode
        # Per-step global mean loss and data counters, kept in checkpoints so a resumed run reports the whole run.
        self.loss_history: list[float] = []
        self.data_counts = {"skipped": 0, "too_long": 0}
        set_trainable(model, list(trainable))
        if activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @property
    def model(self):
        """The Qwen2.5-VL model being trained."""
        return self.net.hf

    def configure_model(self) -> None:
        if self.device_mesh is not None:
            # On GPUs compute in bfloat16 with float32 master weights; CPU runs stay float32.
            param_dtype = torch.bfloat16 if self.device.type == "cuda" else None
            shard_model(self.net, self.device_mesh["data_parallel"], param_dtype)

    def configure_optimizers(self):
        groups = param_groups(self.model, dict(self.hparams.lr), self.hparams.weight_decay)
        optimizer = torch.optim.AdamW(groups, betas=tuple(self.hparams.betas))
        steps = max(1, self.trainer.max_steps)
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer,
            num_warmup_steps=math.ceil(self.hparams.warmup_ratio * steps),
            num_training_steps=steps,
            min_lr_rate=self.hparams.min_lr_ratio,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _global_sum(self, value: torch.Tensor) -> torch.Tensor:
        if dist.is_available() and dist.is_initialized():
            value = value.clone()
            dist.all_reduce(value)
        return value

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = token_losses(self.net(batch), batch["targets"])
        learned = batch["targets"] != IGNORE
        count = learned.sum()
        global_count = self._global_sum(count.detach().float()).clamp(min=1)
        # Gradients are averaged over ranks, so each rank scales its sum by world_size / global token count.
        loss = losses.sum() / global_count * self.trainer.world_size
        mean_loss = self._global_sum(losses.sum().detach()) / global_count
        self.log("train/loss", mean_loss, prog_bar=True, batch_size=1)
        self.loss_history.append(float(mean_loss))
        self._log_counts(batch, losses.detach(), learned)
        return loss

    def _log_counts(self, batch: dict, losses: torch.Tensor, learned: torch.Tensor) -> None:
        """Loss per sample type, packing efficiency and the skip counters."""
        for index, name in enumerate(SAMPLE_TYPES):
            of_type = learned & (batch["type_ids"] == index)
            if of_type.any():
                self.log(f"train/loss_{name}", losses[of_type].mean(), batch_size=int(of_type.sum()))
        real = (batch["segment_ids"] > 0).float().mean()
        self.log("train/packing_efficiency", real, batch_size=1)
        for name in self.data_counts:
            self.data_counts[name] += int(batch[name])
            self.log(f"data/{name}", float(self.data_counts[name]), batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mimovl"] = {"loss_history": self.loss_history, "data_counts": self.data_counts}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("mimovl", {})
        self.loss_history = list(state.get("loss_history", []))
        self.data_counts.update(state.get("data_counts", {}))
