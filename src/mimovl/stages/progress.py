"""One progress bar per stage, named after the stage, with the figures that matter and nothing else.

Shown: the loss; for RL the mean reward, pass rate and response length of the step's rollouts. (Lightning's
default bar counts epochs, which a streamed stage does not have, and shows its logger's version.)
"""

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

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.set_description(self.stage)  # not "Epoch 0"

    def get_metrics(self, trainer, module) -> dict:
        metrics = super().get_metrics(trainer, module)
        return {short: metrics[name] for name, short in SHOWN.items() if name in metrics}
