"""Non-finite numbers never reach the weights, a checkpoint or an export.

`NonFiniteGuard` looks at the gradients of every optimizer step, after the backward pass and before the update
(Lightning's `on_before_optimizer_step`, which automatic and manual optimisation both reach). When any rank has
a NaN or infinite gradient the step is skipped: the gradients are dropped, so the optimizer leaves every
parameter and its state as they were. Skipped steps are counted; after `max_in_a_row` in a row the run stops
with `TrainingDiverged`. Before a checkpoint is saved the weights themselves are checked too (finite gradients
can still overflow a weight).
"""

import logging

import lightning.pytorch as pl

from mimovl.errors import UsageError
from mimovl.metrics import all_finite

log = logging.getLogger(__name__)


class TrainingDiverged(UsageError):
    """The loss or gradients stayed non-finite, or a weight became non-finite: nothing more is written."""


class NonFiniteGuard(pl.Callback):
    """Skips optimizer steps whose gradients are not finite; stops the run after `max_in_a_row` of them.

    Args:
        max_in_a_row: consecutive skipped steps that end the run (a diverged run: lower the learning rate).
    """

    def __init__(self, max_in_a_row: int = 10):
        if max_in_a_row < 1:
            raise UsageError(f"callbacks.finite.max_in_a_row={max_in_a_row}: must be 1 or more")
        self.max_in_a_row = max_in_a_row
        self.skipped = 0  # steps skipped over the whole run (kept in checkpoints)
        self.in_a_row = 0

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        bad_here = not all_finite([p.grad for p in params])
        if not trainer.strategy.reduce_boolean_decision(bad_here, all=False):  # any rank's bad step skips all
            self.in_a_row = 0
            return
        for p in params:
            p.grad = None  # torch's optimizers leave a parameter without a gradient (and its state) untouched
        self.skipped += 1
        self.in_a_row += 1
        log.warning("step %d: non-finite gradients, update skipped (%d in a row, %d in all)",
                    trainer.global_step, self.in_a_row, self.skipped)
        module.log("train/nonfinite_steps", float(self.skipped), batch_size=1)
        if self.in_a_row >= self.max_in_a_row:
            raise TrainingDiverged(
                f"training diverged: {self.in_a_row} optimizer steps in a row had non-finite gradients (at step "
                f"{trainer.global_step}); nothing was written after the last good checkpoint. Lower the learning "
                "rate (stage.module.lr.*), or raise callbacks.finite.max_in_a_row to tolerate more")

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict) -> None:
        if not trainer.strategy.reduce_boolean_decision(all_finite(module.parameters()), all=True):
            raise TrainingDiverged(f"a weight became non-finite by step {trainer.global_step}: no checkpoint is "
                                   "written. Lower the learning rate (stage.module.lr.*)")

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.in_a_row = int(state.get("skipped", 0)), int(state.get("in_a_row", 0))

    def summary(self) -> dict:
        """summary.json's count of skipped steps."""
        return {"nonfinite_steps": self.skipped}

    def headline(self) -> str:
        return f"{self.skipped} non-finite steps skipped" if self.skipped else ""
