"""Metrics that exist only at some steps: a sample type or an RL task absent from a batch has no value there.

Lightning's `self.log` keeps a logged key in the epoch's results and sends its last value again at every later
step; a streamed stage is one long epoch, so an absent type would show its old value as if it were new.
`log_present` sends such metrics straight to the loggers, at this step only.
"""

import lightning.pytorch as pl


def log_present(module: pl.LightningModule, metrics: dict[str, float]) -> None:
    """Logs `metrics` (name -> value) at the current optimizer step, to every logger (rank zero only)."""
    if not metrics or not module.trainer.is_global_zero:
        return
    values = {name: float(value) for name, value in metrics.items()}
    for logger in module.loggers:
        logger.log_metrics(values, step=module.trainer.global_step)
