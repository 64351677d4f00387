"""One progress bar per stage, named after the stage, with the figures that matter and nothing else.

Shown: the loss; for RL the mean reward, pass rate and response length of the step's rollouts. (Lightning's
default bar counts epochs, which a streamed stage does not have, and shows its logger's version.)
"""

import sys

from lightning.pytorch.callbacks import TQDMProgressBar

# Logged metric -> its short name on the bar.
SHOWN = {"train/loss": "loss", "reward/mean": "reward", "pass_rate/mean": "pass", "length/mean": "len",
         "train/accuracy": "acc"}


class StageProgressBar(TQDMProgressBar):
    """A TQDM bar: `<stage>: 12/40 [...] loss=..., reward=...`.

    Args:
        stage: the stage's name, the bar's label.
        refresh_rate: update the bar every N steps.
    """

    def __init__(self, stage: str, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.stage = stage

    @property
    def train_description(self) -> str:
        return self.stage

    @property
    def total_train_batches(self) -> int | float:
        """The stage's batches: a streamed stage is one endless epoch, bounded by max_steps."""
        trainer = self.trainer
        if trainer.max_steps > 0:
            updates = getattr(trainer.lightning_module, "updates_per_batch", 1)
            return trainer.max_steps * trainer.accumulate_grad_batches // updates
        return super().total_train_batches

    def on_train_start(self, trainer, *_) -> None:
        if not sys.stdout.isatty():  # a log file, not a terminal: each redraw is a line; about ten per stage
            self._refresh_rate = max(self._refresh_rate, int(self.total_train_batches) // 10 or 1)
        super().on_train_start(trainer)

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar  # Lightning's, without its "Epoch 0" description
        bar.reset()
        bar.total, bar.initial = self.total_train_batches, 0
        bar.set_description(self.stage, refresh=False)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        # One redraw per update (Lightning's draws the count, then the figures again: two lines in a log file).
        bar, n = self.train_progress_bar, batch_idx + 1
        if self.is_enabled and (n % self.refresh_rate == 0 or n == bar.total):
            bar.set_postfix(self.get_metrics(trainer, module), refresh=False)
            bar.n = n
            bar.refresh()

    def get_metrics(self, trainer, module) -> dict:
        metrics = super().get_metrics(trainer, module)
        return {short: metrics[name] for name, short in SHOWN.items() if name in metrics}
