"""One stage of training, from a composed config to an output directory.

`run(cfg)` builds the model (or loads the previous stage's export), the data, the stage's LightningModule, the
trainer; fits (resuming from last.ckpt when there is one); writes the HF export and summary.json. The
contracts of the output directory are in the README ("Outputs").
"""

import json
import logging
import math
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
import torch.distributed as dist
from omegaconf import DictConfig

from mimovl.model.build import load_hf
from mimovl.stages.sharding import full_state_dict

log = logging.getLogger(__name__)


def resolve_init(cfg: DictConfig) -> str | None:
    """The directory this stage starts from, or None to build `cfg.model` (says which on the log)."""
    init = cfg.stage.init_from
    if init is None:
        return None
    if init == "previous":
        if not cfg.stage.previous:
            raise ValueError(f"stage.init_from=previous needs stage.previous (stage {cfg.stage.name} has none)")
        path = Path(cfg.paths.run_root) / cfg.stage.previous / "hf"
        if not (path / "config.json").exists():
            log.warning("no %s export at %s: starting from model=%s", cfg.stage.previous, path, cfg.model._target_)
            return None
        return str(path)
    if not (Path(init) / "config.json").exists():
        raise FileNotFoundError(f"stage.init_from={init!r} is not a Qwen2.5-VL-format directory (no config.json)")
    return str(init)


def build_model(cfg: DictConfig, init: str | None):
    """(model, processor) for this stage: loaded from `init`, or built from cfg.model."""
    if init is not None:
        log.info("starting from %s", init)
        return load_hf(init)
    return hydra.utils.instantiate(cfg.model)


def stage_steps(stage: DictConfig, world_size: int) -> int:
    """Optimizer steps: stage.steps when the stage sets it, else from the token budget; capped by
    stage.max_steps."""
    if stage.get("steps"):
        return min(stage.steps, stage.max_steps) if stage.max_steps else stage.steps
    tokens_per_step = stage.seq_len * stage.batch_size * stage.accumulate * world_size
    steps = max(1, math.ceil(float(stage.tokens) / tokens_per_step))
    return min(steps, stage.max_steps) if stage.max_steps else steps


def build_trainer(cfg: DictConfig, module: pl.LightningModule) -> pl.Trainer:
    strategy = hydra.utils.instantiate(cfg.strategy) if cfg.strategy.get("_target_") else "auto"
    logger = hydra.utils.instantiate(cfg.logger) if cfg.logger.get("_target_") else False
    stage_callbacks = cfg.stage.get("callbacks") or {}
    callbacks = [hydra.utils.instantiate(c, _convert_="all")
                 for c in [*cfg.callbacks.values(), *stage_callbacks.values()] if c is not None]
    if not logger:  # Lightning refuses a learning-rate monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    overrides = {}
    if not module.automatic_optimization:  # Lightning cannot clip for it: the module clips each of its steps
        module.gradient_clip_val = cfg.trainer.gradient_clip_val
        overrides["gradient_clip_val"] = None
    trainer = hydra.utils.instantiate(cfg.trainer, strategy=strategy, logger=logger, callbacks=callbacks, **overrides)
    steps = stage_steps(cfg.stage, trainer.world_size)
    trainer.fit_loop.epoch_loop.max_steps = steps * getattr(module, "updates_per_batch", 1)
    return trainer


def isolate_sweep_job(cfg: DictConfig) -> None:
    """Under `-m`, each job's run root is its own Hydra job directory, so jobs never share checkpoints."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        cfg.paths.run_root = HydraConfig.get().runtime.output_dir


def run(cfg: DictConfig) -> dict:
    """Trains one stage; returns the summary (also written to <output_dir>/summary.json)."""
    init = resolve_init(cfg)  # before isolating a sweep job: a sweep still starts from the previous stage
    isolate_sweep_job(cfg)
    output_dir = Path(cfg.paths.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    model, processor = build_model(cfg, init)
    data = hydra.utils.instantiate(cfg.stage.datamodule, processor=processor, _convert_="all")
    module = hydra.utils.instantiate(cfg.stage.module, model=model, _convert_="all")
    trainer = build_trainer(cfg, module)
    last = output_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if cfg.resume and last.exists() else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)

    # Both are collectives under FSDP2: every rank calls them.
    state = full_state_dict(module.model)
    log_dir = trainer.log_dir if trainer.logger is not None else None
    summary = {
        "stage": cfg.stage.name,
        "init_from": init or cfg.model._target_,
        "steps": trainer.global_step,
        **module.summary(),
        "output_dir": str(output_dir),
        "hf_dir": str(output_dir / "hf"),
    }
    if trainer.is_global_zero:
        module.export(output_dir / "hf", processor, state)
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"[mimovl] {cfg.stage.name}: {summary['steps']} steps, {module.headline()}; outputs in {output_dir} "
              f"(HF export: {output_dir / 'hf'})")
        if log_dir is not None:
            print(f"[mimovl] logs: {log_dir}")
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return summary
