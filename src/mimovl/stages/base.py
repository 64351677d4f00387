"""What every stage's LightningModule shares, and the protocol `mimovl.train` relies on.

A stage module wraps one network (`net`: a `PackedVLM`, or the reward model built on it) and is written down by
this base class:

    model               what is exported and gathered for export (the Qwen2.5-VL model, or the reward model)
    export(dir, processor, state_dict)   writes the stage's output directory from the gathered weights
    summary() -> dict   the stage's figures for summary.json (strict JSON: None, never NaN)
    headline() -> str   one line for the end-of-run message
    updates_per_batch   optimizer steps per batch (train.py scales max_steps by it; GRPO may take several)
    gradient_clip_val   set by train.py for modules that optimize manually (Lightning clips the others)

The base does the rest once: trainable parts and activation checkpointing, FSDP2 sharding of each net in
`sharded` (bf16 compute on GPUs, float32 master weights), and checkpointing of `history` (per-step figures,
lists with None for steps the non-finite guard skipped) and `data_counts` (what the data stream skipped).
"""

from abc import ABC, abstractmethod

import lightning.pytorch as pl
import torch

from mimovl.model.export import export_hf
from mimovl.model.parts import check_lr, set_trainable
from mimovl.model.sharding import shard_model


class StageModule(pl.LightningModule, ABC):
    """The base of the stage LightningModules (see the module docstring for the protocol).

    Args:
        net: the network trained; `net.hf` is its Qwen2.5-VL model.
        trainable: parts to train (`mimovl.model.parts.PARTS`); the rest is frozen and left out of the optimizer.
        lr: one learning rate per trainable part (exactly those parts).
        activation_checkpointing: recompute ViT blocks and decoder layers in the backward pass.
        history: names of the per-optimizer-step series kept (e.g. loss, accuracy).
        data_counts: the data counters kept, with their starting values.
    """

    updates_per_batch: int = 1
    gradient_clip_val: float | None = None

    def __init__(self, net: torch.nn.Module, trainable: list[str], lr: dict[str, float],
                 activation_checkpointing: bool = False, history: tuple[str, ...] = ("loss",),
                 data_counts: dict | None = None):
        super().__init__()
        check_lr(trainable, lr)
        self.net = net
        set_trainable(net.hf, list(trainable))
        if activation_checkpointing:
            net.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.history: dict[str, list] = {name: [] for name in history}
        self.data_counts: dict = dict(data_counts or {})

    @property
    def model(self) -> torch.nn.Module:
        """What `export` writes: the Qwen2.5-VL model."""
        return self.net.hf

    @property
    def sharded(self) -> list[torch.nn.Module]:
        """The nets FSDP2 shards (a frozen reference policy joins the trained one in GRPO)."""
        return [self.net]

    def configure_model(self) -> None:
        if self.device_mesh is None:
            return
        # On GPUs compute in bfloat16 with float32 master weights; CPU runs stay float32. (The module is still on
        # the CPU here: ask the strategy where it is going.)
        param_dtype = torch.bfloat16 if self.trainer.strategy.root_device.type == "cuda" else None
        for net in self.sharded:
            shard_model(net, self.device_mesh["data_parallel"], param_dtype)

    def export(self, directory, processor, state_dict: dict) -> None:
        """Writes the Qwen2.5-VL directory (`state_dict`: `model`'s full weights, gathered on every rank)."""
        export_hf(self.model, processor, directory, state_dict=state_dict)

    @abstractmethod
    def summary(self) -> dict:
        """The stage's figures for summary.json."""

    def headline(self) -> str:
        """One line for the end-of-run message."""
        summary = self.loss_summary()
        return f"loss {summary['first_loss']} -> {summary['last_loss']}"

    def loss_summary(self) -> dict:
        """first_loss, last_loss (skipped steps left out) and the whole loss_history."""
        finite = [value for value in self.history["loss"] if value is not None]
        return {"first_loss": finite[0] if finite else None, "last_loss": finite[-1] if finite else None,
                "loss_history": self.history["loss"]}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mimovl"] = {"history": self.history, "data_counts": self.data_counts}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("mimovl", {})
        for name, values in state.get("history", {}).items():
            self.history[name] = list(values)
        self.data_counts.update(state.get("data_counts", {}))
