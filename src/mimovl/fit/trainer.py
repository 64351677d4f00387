"""The Lightning Trainer of a stage: strategy, loggers, callbacks (the shared ones and the stage's own), the
atomic checkpoint plugin, and the number of optimizer steps the stage's budget gives."""

import math
from typing import Protocol, runtime_checkable

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig

from mimovl.errors import require
from mimovl.fit.checkpoint import AtomicCheckpointIO
from mimovl.fit.loggers import build_loggers
from mimovl.stages.base import StageModule


@runtime_checkable
class Reporting(Protocol):
    """A callback whose figures join summary.json, and whose headline (when not empty) the end-of-run line."""

    def summary(self) -> dict: ...

    def headline(self) -> str: ...


def stage_steps(stage: DictConfig, world_size: int) -> int:
    """Optimizer steps: stage.steps when the stage sets it, else from the token budget; capped by
    stage.max_steps."""
    for key in ("steps", "max_steps", "tokens"):
        value = stage.get(key)
        require(value is None or value > 0, f"stage.{key}", value, "must be above 0 (or null)")
    for key in ("seq_len", "batch_size", "accumulate"):
        require(isinstance(stage.get(key), int) and stage.get(key) >= 1, f"stage.{key}", stage.get(key),
                "must be a whole number, at least 1")
    require(bool(stage.get("steps") or stage.get("tokens")), "stage.tokens", stage.get("tokens"),
            "a stage needs stage.steps or a token budget, stage.tokens")
    if stage.get("steps"):
        return min(stage.steps, stage.max_steps) if stage.max_steps else stage.steps
    tokens_per_step = stage.seq_len * stage.batch_size * stage.accumulate * world_size
    steps = max(1, math.ceil(float(stage.tokens) / tokens_per_step))
    return min(steps, stage.max_steps) if stage.max_steps else steps


def build_trainer(cfg: DictConfig, module: StageModule) -> pl.Trainer:
    strategy = hydra.utils.instantiate(cfg.strategy) if cfg.strategy.get("_target_") else "auto"
    loggers = build_loggers(cfg)
    stage_callbacks = cfg.stage.get("callbacks") or {}
    callbacks = [hydra.utils.instantiate(c, _convert_="all")
                 for c in [*cfg.callbacks.values(), *stage_callbacks.values()] if c is not None]
    if not loggers:  # Lightning refuses a learning-rate monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):  # nor a progress bar with the bar switched off
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    overrides = {}
    if not module.automatic_optimization:  # Lightning cannot clip for it: the module clips each of its steps
        module.gradient_clip_val = cfg.trainer.gradient_clip_val
        overrides["gradient_clip_val"] = None
    trainer = hydra.utils.instantiate(cfg.trainer, strategy=strategy, logger=loggers or False, callbacks=callbacks,
                                      plugins=[AtomicCheckpointIO()], **overrides)
    steps = stage_steps(cfg.stage, trainer.world_size)
    trainer.fit_loop.epoch_loop.max_steps = steps * module.updates_per_batch
    return trainer
