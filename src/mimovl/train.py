"""One stage of training, from a composed config to an output directory.

`run(cfg)` builds the model (or loads the previous stage's export), the data, the stage's LightningModule (a
`mimovl.stages.base.StageModule`), the trainer; fits (resuming from last.ckpt when there is one); writes the HF
export and summary.json. The contracts of the output directory are in the README ("Outputs").
"""

import logging
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from mimovl.fit.finite import TrainingDiverged
from mimovl.fit.loggers import close_loggers, report_loggers
from mimovl.fit.trainer import Reporting, build_trainer
from mimovl.metrics import all_finite
from mimovl.model.sharding import full_state_dict
from mimovl.model.start import build_model, describe_start, resolve_init
from mimovl.outputs import resume_point, run_lock, write_json
from mimovl.stages.base import StageModule

log = logging.getLogger(__name__)


def isolate_sweep_job(cfg: DictConfig) -> None:
    """Under `-m`, each job's run root is its own Hydra job directory, so jobs never share checkpoints; its W&B
    run is named after the job's overrides and grouped by the sweep (<run_name>-<sweep directory name>)."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return
    hydra_cfg = HydraConfig.get()
    cfg.paths.run_root = hydra_cfg.runtime.output_dir
    if (cfg.logger or {}).get("wandb"):
        cfg.logger.wandb.name = f"{cfg.stage.name}-{hydra_cfg.job.num}-{_job_label(hydra_cfg.overrides.task)}"[:128]
        cfg.logger.wandb.group = f"{cfg.run_name}-{Path(hydra_cfg.sweep.dir).name}"


def _job_label(overrides) -> str:
    """A sweep job's overrides as a run name: paths (values with '/') left out, as they name no setting."""
    return ",".join(o for o in overrides if "/" not in o.split("=", 1)[-1]) or "defaults"






def run(cfg: DictConfig) -> dict:
    """Trains one stage; returns the summary (also written to <output_dir>/summary.json)."""
    init = resolve_init(cfg)  # before isolating a sweep job: a sweep still starts from the previous stage
    isolate_sweep_job(cfg)
    output_dir = Path(cfg.paths.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    # A second run into this directory stops here, naming the run that holds it.
    with run_lock(output_dir, rank_zero_only.rank):
        return _train(cfg, init, output_dir)


def _train(cfg: DictConfig, init: str | None, output_dir: Path) -> dict:
    """`run` inside the output directory's lock."""
    pl.seed_everything(cfg.seed, workers=True)
    resume = resume_point(output_dir / "checkpoints" / "last.ckpt") if cfg.resume else None
    if rank_zero_only.rank == 0:
        start = (f"resuming from {resume.path} (step {resume.step})" if resume
                 else f"starting from {describe_start(cfg, init)}")
        print(f"[mimovl] {cfg.stage.name}: {start}; outputs in {output_dir}")
    model, processor = build_model(cfg, init)
    data = hydra.utils.instantiate(cfg.stage.datamodule, processor=processor, _convert_="all")
    module: StageModule = hydra.utils.instantiate(cfg.stage.module, model=model, _convert_="all")
    trainer = build_trainer(cfg, module)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume.path) if resume else None)

    # Both are collectives under FSDP2: every rank calls them.
    state = full_state_dict(module.model)
    if not all_finite(state.values()):
        raise TrainingDiverged(f"{cfg.stage.name}: the trained weights are not finite; nothing is exported. Lower "
                               "the learning rate (stage.module.lr.*)")
    log_dirs = [logger.log_dir for logger in trainer.loggers if not isinstance(logger, WandbLogger)]
    wandb_run = close_loggers(trainer.loggers)
    reporting = [c for c in trainer.callbacks if isinstance(c, Reporting)]
    summary = {
        "stage": cfg.stage.name,
        "init_from": init or cfg.model._target_,
        "steps": trainer.global_step,
        **module.summary(),
        **{k: v for c in reporting for k, v in c.summary().items()},
        "output_dir": str(output_dir),
        "hf_dir": str(output_dir / "hf"),
        "wandb": wandb_run,
    }
    if trainer.is_global_zero:
        module.export(output_dir / "hf", processor, state)
        write_json(output_dir / "summary.json", summary)
        headline = "; ".join(h for h in [module.headline(), *(c.headline() for c in reporting)] if h)
        print(f"[mimovl] {cfg.stage.name}: {summary['steps']} steps, {headline}; outputs in {output_dir} "
              f"(HF export: {output_dir / 'hf'})")
        report_loggers(wandb_run, log_dirs)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return summary
