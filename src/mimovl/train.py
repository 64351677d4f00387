"""One stage of training, from a composed config to an output directory.

`run(cfg)` builds the model (or loads the previous stage's export), the data, the stage's LightningModule, the
trainer; fits (resuming from last.ckpt when there is one); writes the HF export and summary.json. The
contracts of the output directory are in the README ("Outputs").
"""

import logging
import math
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from mimovl.errors import UsageError, require
from mimovl.model.build import load_hf
from mimovl.programme import prepare_previous
from mimovl.outputs import AtomicCheckpointIO, resume_point, run_lock, write_json
from mimovl.stages.finite import TrainingDiverged, all_finite
from mimovl.stages.sharding import full_state_dict

log = logging.getLogger(__name__)


def resolve_init(cfg: DictConfig) -> str | None:
    """The directory this stage starts from, or None to build `cfg.model` (says which)."""
    init = cfg.stage.init_from
    if init is None:
        return None
    if init == "previous":
        if not cfg.stage.previous:
            raise UsageError(f"stage.init_from=previous, but stage {cfg.stage.name} has no stage.previous: "
                             "set stage.init_from=DIR (a Qwen2.5-VL-format directory) or stage.init_from=null")
        path = Path(cfg.paths.run_root) / cfg.stage.previous / "hf"
        if not (path / "config.json").exists():
            log.warning("no %s export at %s: starting from model=%s", cfg.stage.previous, path, _model_name(cfg))
            return None
        return str(path)
    check_checkpoint(init, "stage.init_from")
    return str(init)


def describe_start(cfg: DictConfig, init: str | None) -> str:
    """What a stage starts from, in words: the directory, or the model config (and which export was missing)."""
    if init:
        return init
    missing = cfg.stage.init_from == "previous"
    return f"model={_model_name(cfg)}" + (f" (no {cfg.stage.previous} export under {cfg.paths.run_root}: run "
                                          f"stage={cfg.stage.previous} first, or stage=all, for a trained start)"
                                          if missing else "")


def check_checkpoint(path, key: str) -> None:
    """A UsageError naming `key` unless `path` is a Qwen2.5-VL-format directory."""
    if not (Path(path) / "config.json").is_file():
        problem = "does not exist" if not Path(path).exists() else "has no config.json"
        raise UsageError(f"{key}={path}: {problem}. Point it at a Qwen2.5-VL-format directory (a stage's hf/ "
                         "export, or a released checkpoint such as MiMo-VL-7B-SFT)")


def _model_name(cfg: DictConfig) -> str:
    """The model config's builder, e.g. build_tiny (random init) or load_hf."""
    name = str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1]
    return f"{name} (random init)" if name == "build_tiny" else name


def build_model(cfg: DictConfig, init: str | None):
    """(model, processor) for this stage: loaded from `init`, or built from cfg.model."""
    if init is not None:
        log.info("starting from %s", init)
        model, processor = load_hf(init)
        check_chat_template(processor, f"stage.init_from={init}")
        return model, processor
    missing = [k for k in cfg.model if OmegaConf.is_missing(cfg.model, k)]
    if missing:
        raise UsageError(f"this model config needs {', '.join(f'model.{k}=...' for k in missing)} "
                         "(conf/model/ says what each one is)")
    settings = {k: v for k, v in cfg.model.items() if k != "scale"}  # scale is the recipe's, not an argument
    if "path" in settings:
        check_checkpoint(settings["path"], "model.path")
    model, processor = hydra.utils.instantiate(settings)
    check_chat_template(processor, f"model.path={settings['path']}" if "path" in settings else "model")
    return model, processor


def check_chat_template(processor, where: str) -> None:
    """Chats are templated with the processor's chat template: a model without one cannot be trained here."""
    if not (getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)):
        raise UsageError(f"{where}: the model has no chat template. Add one to its directory "
                         "(chat_template.jinja, e.g. Qwen2.5-VL's, or an export's from this repo)")


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


def build_trainer(cfg: DictConfig, module: pl.LightningModule) -> pl.Trainer:
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
    trainer.fit_loop.epoch_loop.max_steps = steps * getattr(module, "updates_per_batch", 1)
    return trainer


def build_loggers(cfg: DictConfig) -> list:
    """The loggers of `cfg.logger` (a dict of logger configs: wandb, csv; empty for logger=none)."""
    return [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values() if c and c.get("_target_")]


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


def run(cfg: DictConfig) -> dict:
    """Trains one stage; returns the summary (also written to <output_dir>/summary.json)."""
    if cfg.stage.get("prepare"):
        prepare_previous(cfg)
    init = resolve_init(cfg)  # before isolating a sweep job: a sweep still starts from the previous stage
    isolate_sweep_job(cfg)
    output_dir = Path(cfg.paths.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(output_dir):  # a second run into this directory stops here, naming the run that holds it
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
    module = hydra.utils.instantiate(cfg.stage.module, model=model, _convert_="all")
    trainer = build_trainer(cfg, module)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume.path) if resume else None)

    # Both are collectives under FSDP2: every rank calls them.
    state = full_state_dict(module.model)
    if not all_finite(state.values()):
        raise TrainingDiverged(f"{cfg.stage.name}: the trained weights are not finite; nothing is exported. Lower "
                               "the learning rate (stage.module.lr.*)")
    log_dirs = [logger.log_dir for logger in trainer.loggers if not isinstance(logger, WandbLogger)]
    wandb_run = close_loggers(trainer.loggers)
    summary = {
        "stage": cfg.stage.name,
        "init_from": init or cfg.model._target_,
        "steps": trainer.global_step,
        **module.summary(),
        **{k: v for c in trainer.callbacks if hasattr(c, "summary") for k, v in c.summary().items()},
        "output_dir": str(output_dir),
        "hf_dir": str(output_dir / "hf"),
        "wandb": wandb_run,
    }
    if trainer.is_global_zero:
        module.export(output_dir / "hf", processor, state)
        write_json(output_dir / "summary.json", summary)
        print(f"[mimovl] {cfg.stage.name}: {summary['steps']} steps, {module.headline()}; outputs in {output_dir} "
              f"(HF export: {output_dir / 'hf'})")
        report_loggers(wandb_run, log_dirs)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return summary
