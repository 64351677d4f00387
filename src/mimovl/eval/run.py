"""stage=eval: a policy generates greedily with the rollout engine (vLLM) on held-out prompts, and the RL
stage's reward functions score each answer.

Scores per task are the mean reward: accuracy for math, multiple choice, counting and GUI points; the
size-matched GIoU reward for boxes (`mimovl.rewards.grounding`); the segment IoU for temporal grounding;
reward-model scores for open-ended prompts when the programme has reward models. They go to summary.json
(`scores`, `mean_score`), to W&B and the CSV log (`eval/<task>`), and every response to responses.jsonl.
Public benchmarks are run by lmms-eval on the `hf/` export (recipes/mimo_vl/README.md). Runs in one process.
"""

import json
import logging
import os
from pathlib import Path

import hydra
import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from mimovl.errors import UsageError
from mimovl.fit.loggers import build_loggers, close_loggers, report_loggers
from mimovl.generate.engines import Sampling
from mimovl.generate.score import build_router, generate_and_score, sums_by_kind
from mimovl.model.export import export_hf
from mimovl.model.start import build_model, describe_start, resolve_init
from mimovl.outputs import write_json

log = logging.getLogger(__name__)
# What each task's mean reward measures (summary.json's `metrics`).
METRICS = {"math": "accuracy", "multiple_choice": "accuracy", "counting": "accuracy", "grounding_point": "accuracy",
           "grounding_box": "GIoU reward, (GIoU + 1) / 2 x area ratio", "temporal_grounding": "segment IoU",
           "open_text": "text reward model", "open_vision": "multimodal reward model"}


def evaluate(cfg: DictConfig) -> dict:
    """Scores the stage's policy on `data.heldout`; returns the summary (also written to summary.json)."""
    stage = cfg.stage
    if int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1))) > 1:
        raise UsageError("stage=eval runs in one process: launch it as a single task (srun --ntasks=1)")
    init = resolve_init(cfg)
    output_dir = Path(cfg.paths.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed)
    print(f"[mimovl] eval: scoring {describe_start(cfg, init)}; outputs in {output_dir}")
    model, processor = build_model(cfg, init)
    if stage.max_new_tokens is None and "VLLMRollout" not in str(cfg.rollout.get("_target_")):
        raise UsageError("stage.max_new_tokens=null (up to the context) needs rollout=vllm; or set "
                         "stage.max_new_tokens=N")
    data = hydra.utils.instantiate(stage.datamodule, processor=processor, _convert_="all")
    data.prepare_data()
    reward = cfg.reward
    router = build_router(reward.models, reward.timeout, reward.retries)
    prompts = data.heldout(router.can_score)
    if not prompts:
        raise UsageError(f"stage.mix={stage.mix} selects no held-out prompts from "
                         f"data.heldout={dict(cfg.data.heldout)}: name held-out shards there")

    engine_settings = {}
    if stage.max_pixels and processor.image_processor.size["longest_edge"] > stage.max_pixels:
        engine_settings["mm_processor_kwargs"] = {"max_pixels": int(stage.max_pixels)}
    engine = hydra.utils.instantiate(cfg.rollout, **engine_settings)(
        policy=model, export=lambda: Path(init) if init else _export(model, processor, output_dir / "policy"))
    engine.sync(model.state_dict().items())  # a reused engine may serve other weights
    sampling = Sampling(n=1, temperature=stage.temperature, max_new_tokens=stage.max_new_tokens)
    scored = generate_and_score(engine, router, prompts, sampling, processor)

    sums = sums_by_kind(scored)
    scores = {kind: total / n for kind, (total, n) in sorted(sums.items())}
    summary = {
        "stage": stage.name,
        "init_from": init or cfg.model._target_,
        "scores": scores,
        "mean_score": sum(scores.values()) / len(scores),
        "prompts": {kind: n for kind, (_, n) in sorted(sums.items())},
        "metrics": {kind: METRICS.get(kind, "mean reward") for kind in scores},
        "settings": {"temperature": stage.temperature, "max_new_tokens": stage.max_new_tokens,
                     "max_pixels": stage.max_pixels},
        "output_dir": str(output_dir),
    }
    with open(output_dir / "responses.jsonl", "w") as f:
        for row in scored:
            f.write(json.dumps({"kind": row.prompt.kind, "key": row.prompt.key, "answer": row.prompt.answer,
                                "response": row.completion.text, "finished": row.completion.finished,
                                "reward": row.reward}) + "\n")
    summary["wandb"], log_dirs = _log(cfg, scores, scored)
    write_json(output_dir / "summary.json", summary)
    table = ", ".join(f"{kind} {score:.3f}" for kind, score in scores.items())
    print(f"[mimovl] eval: {len(scored)} prompts, mean {summary['mean_score']:.3f} ({table}); "
          f"summary in {output_dir / 'summary.json'}")
    report_loggers(summary["wandb"], log_dirs)
    return summary


def _export(model, processor, directory: Path) -> Path:
    export_hf(model, processor, directory)
    return directory


def _log(cfg: DictConfig, scores: dict, scored: list) -> tuple[dict | None, list[str]]:
    """Scores to every logger (`eval/<kind>`), a W&B table of responses; returns (W&B run, other log dirs)."""
    loggers = build_loggers(cfg)
    for logger in loggers:
        logger.log_metrics({f"eval/{kind}": score for kind, score in scores.items()}, step=0)
        if isinstance(logger, WandbLogger):
            rows = [[r.prompt.kind, r.prompt.key, json.dumps(r.prompt.answer), r.completion.text, r.reward]
                    for r in scored[: cfg.rl.table_rows * 8]]
            logger.log_table(key="eval/responses", columns=["kind", "key", "answer", "response", "reward"],
                             data=rows)
        else:
            logger.save()
    log_dirs = [logger.log_dir for logger in loggers if not isinstance(logger, WandbLogger)]
    return close_loggers(loggers), log_dirs
