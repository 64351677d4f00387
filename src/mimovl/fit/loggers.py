"""The loggers of a run (`cfg.logger`: W&B, CSV, none): built from config, closed so the next run in this
process starts its own W&B run, and reported (where the metrics are) at the end."""

from pathlib import Path

import hydra
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig


def build_loggers(cfg: DictConfig) -> list:
    """The loggers of `cfg.logger` (a dict of logger configs: wandb, csv; empty for logger=none)."""
    return [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values() if c and c.get("_target_")]


def close_loggers(loggers: list) -> dict | None:
    """Finishes the W&B run, so the next run in this process (a sweep job, the next stage of stage=all) starts
    its own; returns where it is: {project, name, group, dir} (on rank zero; other ranks have no run)."""
    if rank_zero_only.rank != 0:
        return None
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            where = {"project": run.project, "name": run.name, "group": run.group,
                     "dir": str(Path(run.dir).parent.resolve())}
            run.finish()
            return where
    return None


def report_loggers(wandb_run: dict | None, log_dirs: list[str]) -> None:
    """Prints where the run's metrics are (rank 0)."""
    if wandb_run:
        print(f"[mimovl] W&B run {wandb_run['name']!r} (group {wandb_run['group']!r}) in {wandb_run['dir']}; "
              f"upload an offline run with: wandb sync {wandb_run['dir']}")
    for directory in log_dirs:
        print(f"[mimovl] metrics: {Path(directory).resolve() / 'metrics.csv'}")
