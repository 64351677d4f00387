"""stage=all: the whole programme in one command, each stage starting from the previous stage's export.

    python src/run.py +recipe=mimo_vl stage=all        # s1 -> s2 -> s3 -> s4 -> rm_text -> rm -> rl -> eval

Every stage is composed as if it had been run alone (`stage=<name>` plus the same command-line overrides) and
writes under the same run root. Stages have different keys, so set a stage key for all of them with `++`
(`++stage.max_steps=2`: added where a stage lacks it). A stage whose summary.json is already there is skipped,
so re-running the command resumes where it stopped; a stage cut short resumes from its own last.ckpt. The run
ends with a table of per-task held-out scores before RL, after RL and in evaluation (also in
<run_root>/all/summary.json). Stages that read data through DataLoader workers come before `rl`: a worker
forked after the in-process vLLM engine has started would hang.
"""

import json
import logging
import re
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mimovl.errors import UsageError
from mimovl.outputs import write_json

log = logging.getLogger(__name__)
DEFAULT_RUNNER = "mimovl.train.run"  # what runs a stage whose YAML names no `stage.runner`


def run_stage(cfg: DictConfig) -> dict:
    """Runs `cfg.stage.runner` (training by default) and returns its summary; with `stage.prepare`, first the
    stages before it whose exports are missing (`prepare_previous`). A runner with a `check(cfg)` attribute has
    its settings checked before anything is prepared (a wrong value costs no training)."""
    runner = _runner(cfg)
    if hasattr(runner, "check"):
        runner.check(cfg)
    if cfg.stage.get("prepare"):
        prepare_previous(cfg)
    return runner(cfg)


def _runner(cfg: DictConfig):
    return hydra.utils.get_method(cfg.stage.get("runner") or DEFAULT_RUNNER)


def run_all(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Runs cfg.stage.stages in order; returns the programme's summary (per-task scores before/after RL, eval).

    overrides: the command line's overrides (default: Hydra's, when called from `src/run.py`); each stage is
    composed from them with `stage=<name>` in place of `stage=all`.
    """
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task)
    overrides = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~") == "stage"]
    run_root = Path(cfg.paths.run_root)
    done = {}
    for name in cfg.stage.stages:
        stage_cfg = compose_stage(name, overrides)
        summary_path = Path(stage_cfg.paths.output_dir) / "summary.json"
        if stage_cfg.resume and summary_path.exists():
            print(f"[mimovl] all: {name} is done ({summary_path}); skipping it")
        else:
            print(f"[mimovl] all: running {name}")
            _runner(stage_cfg)(stage_cfg)
        done[name] = json.loads(summary_path.read_text())
    summary = programme_summary(done)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "summary.json", summary)
    print(f"[mimovl] all: {', '.join(done)} done under {run_root}\n{format_table(summary['table'])}")
    return summary


# Config groups only the stages that use them mount (rl, eval, all): their overrides go to those stages alone.
STAGE_GROUPS = ("rl", "rollout", "reward")


def compose_stage(name: str, overrides: list[str]) -> DictConfig:
    """The config of `stage=<name>` with the command's `overrides`, less those of a group the stage does not
    mount (`rl.group_size=4` or `rollout=hf` apply to stage=rl, and mean nothing to stage=s1)."""
    def group(override: str) -> str:
        return re.split(r"[.@/=]", override.lstrip("+~"), maxsplit=1)[0]

    common = [o for o in overrides if group(o) not in STAGE_GROUPS]
    stage_cfg = compose(config_name="config", overrides=[*common, f"stage={name}"])
    own = [o for o in overrides if group(o) in STAGE_GROUPS and group(o) in stage_cfg]
    if own:
        stage_cfg = compose(config_name="config", overrides=[*common, *own, f"stage={name}"])
    return stage_cfg


def prepare_previous(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Runs the stages leading to this one whose export is missing (`missing_chain`), earliest first, so that
    `stage.init_from: previous` finds a trained start.

    The tiny recipe turns this on for `stage=rl` (`stage.prepare`): the quickstart then learns from an SFT-like
    policy instead of a random one. It is off at the paper's scale, where a missing stage 4 is a mistake to
    report, not hours of pre-training to start.
    """
    chain = missing_chain(cfg, overrides)
    if not chain:
        return
    names = " -> ".join(c.stage.name for c in chain)
    print(f"[mimovl] {cfg.stage.name}: no {cfg.stage.previous} export under {cfg.paths.run_root}: preparing it "
          f"first with {names} (stage.prepare=false starts from model={cfg.model._target_.rsplit('.', 1)[-1]} "
          "instead); the next run reuses it")
    for stage_cfg in chain:
        print(f"[mimovl] {cfg.stage.name}: preparing {stage_cfg.stage.name}")
        _runner(stage_cfg)(stage_cfg)


def missing_chain(cfg: DictConfig, overrides: list[str] | None = None) -> list[DictConfig]:
    """The configs of the stages before this one (following `stage.previous`) back to the last with an export,
    earliest first; empty when this stage does not start from `previous` or its previous export exists. Each is
    composed like `stage=<name>` with the command's overrides (default: Hydra's), less those of `stage.*` (they
    are this stage's)."""
    if cfg.stage.init_from != "previous" or not cfg.stage.previous:
        return []  # this stage starts from a directory, or from `model`: there is nothing to prepare
    if (Path(cfg.paths.run_root) / cfg.stage.previous / "hf" / "config.json").exists():
        return []
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    overrides = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith("stage")]
    chain, name = [], cfg.stage.previous
    while name:
        stage_cfg = compose_stage(name, overrides)
        if (Path(stage_cfg.paths.output_dir) / "hf" / "config.json").exists():
            break
        chain.insert(0, stage_cfg)
        name = stage_cfg.stage.previous if stage_cfg.stage.init_from == "previous" else None
    return chain


def programme_summary(done: dict[str, dict]) -> dict:
    """Per-task scores: held-out reward before and after RL (stage rl) and the eval stage's scores."""
    rl, evaluation = done.get("rl", {}), done.get("eval", {})
    before, after, scores = rl.get("reward_before") or {}, rl.get("reward_after") or {}, evaluation.get("scores", {})
    tasks = sorted(set(before) | set(after) | set(scores))
    if not tasks:
        raise UsageError("stage.stages runs neither rl nor eval: there is no per-task score to report")
    table = {task: {"before_rl": before.get(task), "after_rl": after.get(task), "eval": scores.get(task)}
             for task in tasks}
    return {
        "stage": "all",
        "stages": {name: s.get("output_dir") for name, s in done.items()},
        "table": table,
        "mean_reward_before": rl.get("mean_reward_before"),
        "mean_reward_after": rl.get("mean_reward_after"),
        "mean_score": evaluation.get("mean_score"),
    }


def format_table(table: dict[str, dict]) -> str:
    """The per-task table as aligned text."""
    columns = ("before_rl", "after_rl", "eval")
    lines = [f"{'task':<20}" + "".join(f"{c:>11}" for c in columns)]
    for task, row in table.items():
        lines.append(f"{task:<20}" + "".join(f"{row[c]:>11.3f}" if row[c] is not None else f"{'-':>11}"
                                             for c in columns))
    return "\n".join(lines)
