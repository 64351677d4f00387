"""stage=study: the report's task-interference study and its on-policy ablation, in one command.

    python src/run.py +recipe=mimo_vl stage=study

From one SFT policy (stage 4's export; with `stage.prepare`, `mimovl.programme.run_stage` first trains the stages
before it when it is missing), RL runs once per arm, each arm being stage=rl composed with the command's
overrides plus its own:

    single_<task>   RL on that rule task alone (`rl.tasks=[<task>]`), for each task of `stage.tasks`
    mix             RL on all of `stage.tasks` together: the report's mixed on-policy RL
    mix_vanilla     the mix as vanilla GRPO: `stage.vanilla` laid over `rl.loss` (several updates per rollout,
                    clipped ratio) against the report's single on-policy update

Every arm trains on the same budget of response tokens (`rl.update_tokens=stage.update_tokens`; `stage.steps`
caps each arm's rollout steps) and writes under <run_root>/study/<arm>/. An arm whose summary.json exists is
skipped, so re-running the command resumes the study; an arm cut short resumes from its own last.ckpt. The
study's summary.json (<run_root>/study/summary.json) holds, per task: the held-out reward before RL, after
single-task RL, after mixed RL and after vanilla mixed RL; the mean held-out response length in tokens and the
share of responses with a `<think>` part, before and after each; and per arm its budget, steps and the
per-step history (reward, length, think share per task) that notebooks/interference.ipynb plots.
"""

import json
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mimovl.errors import require
from mimovl.outputs import write_json
from mimovl.programme import compose_stage, run_stage
from mimovl.rewards import TASKS

TABLE_COLUMNS = ("before", "single", "mix", "vanilla")  # held-out reward; then lengths and think shares likewise
ARMS = TABLE_COLUMNS[1:]  # the columns an arm's "after" figures fill


def run_study(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Runs every arm of the study in turn (`arms`), then writes and prints the per-task table."""
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    overrides = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith("stage")]
    study = cfg.stage
    check_study(study)
    output_dir = Path(cfg.paths.output_dir).resolve()
    done = {}
    for name, arm_overrides in arms(study, output_dir).items():
        arm_cfg = compose_stage("rl", [*overrides, *arm_overrides])
        if (arm_cfg.logger or {}).get("wandb"):
            arm_cfg.logger.wandb.name = f"{cfg.run_name}-study-{name}"
        summary_path = Path(arm_cfg.paths.output_dir) / "summary.json"
        if arm_cfg.resume and summary_path.exists():
            print(f"[mimovl] study: {name} is done ({summary_path}); skipping it")
        else:
            print(f"[mimovl] study: running {name} ({' '.join(arm_overrides[:-1])})")
            run_stage(arm_cfg)
        done[name] = json.loads(summary_path.read_text())
    summary = study_summary(list(study.tasks), done, study.update_tokens,
                            OmegaConf.to_container(study.vanilla))
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "summary.json", summary)
    print(f"[mimovl] study: {len(done)} arms done under {output_dir}\n{format_study(summary['table'])}")
    return summary


def check_study(study: DictConfig) -> None:
    """UsageError for a study that cannot run: unknown or repeated tasks, a missing budget."""
    tasks = list(study.tasks or [])
    require(bool(tasks) and set(tasks) <= set(TASKS) and len(set(tasks)) == len(tasks), "stage.tasks",
            tasks, f"must list distinct rule tasks from {list(TASKS)}")
    require(isinstance(study.update_tokens, int) and study.update_tokens > 0, "stage.update_tokens",
            study.update_tokens, "must be a positive integer: every arm trains on this many response tokens")
    require(isinstance(study.steps, int) and study.steps > 0, "stage.steps", study.steps,
            "must be a positive integer: the most rollout steps an arm takes to spend its budget")


def arms(study: DictConfig, output_dir: Path) -> dict[str, list[str]]:
    """Each arm's stage=rl overrides (its tasks, the token budget, the step cap, its output directory)."""
    budget = [f"rl.update_tokens={study.update_tokens}", f"stage.steps={study.steps}"]
    everything = "[" + ",".join(study.tasks) + "]"
    vanilla = [f"rl.loss.{key}={value}" for key, value in OmegaConf.to_container(study.vanilla).items()]
    plan = {f"single_{task}": [f"rl.tasks=[{task}]", *budget] for task in study.tasks}
    plan["mix"] = [f"rl.tasks={everything}", *budget]
    plan["mix_vanilla"] = [f"rl.tasks={everything}", *budget, *vanilla]
    return {name: [*o, f"paths.output_dir={output_dir / name}"] for name, o in plan.items()}


def study_summary(tasks: list[str], done: dict[str, dict], update_tokens: int, vanilla: dict) -> dict:
    """The study's summary.json from its arms' summaries (stage=rl's: reward/length/think before and after,
    trained_tokens, history)."""
    def arm_of(column: str, task: str) -> dict:
        return done[{"single": f"single_{task}", "mix": "mix", "vanilla": "mix_vanilla"}[column]]

    table = {}
    for task in tasks:
        row = {}
        for figure in ("reward", "length", "think"):
            row[f"{figure}_before"] = done["mix"][f"{figure}_before"].get(task)
            for column in ARMS:
                row[f"{figure}_{column}"] = arm_of(column, task)[f"{figure}_after"].get(task)
        table[task] = row
    return {
        "stage": "study",
        "tasks": tasks,
        "update_tokens": update_tokens,
        "vanilla": vanilla,
        "table": table,
        "mean_reward": {column: _mean([row[f"reward_{column}"] for row in table.values()])
                        for column in TABLE_COLUMNS},
        "arms": {name: {"output_dir": s["output_dir"], "steps": s["steps"], "trained_tokens": s["trained_tokens"],
                        "rollout_steps": len(s["history"]), "history": s["history"]}
                 for name, s in done.items()},
    }


run_study.check = lambda cfg: check_study(cfg.stage)  # mimovl.programme.run_stage: before preparing s4


def format_study(table: dict[str, dict]) -> str:
    """The per-task table as aligned text: rewards, then mean lengths, before and after each arm."""
    head = "".join(f"{c:>9}" for c in TABLE_COLUMNS)
    lines = [f"{'task':<20}{'held-out reward':^36}{'response length (tokens)':^36}{'share with <think>':^36}",
             f"{'':<20}{head}{head}{head}"]
    for task, row in table.items():
        cells = [row[f"{figure}_{c}"] for figure in ("reward", "length", "think") for c in TABLE_COLUMNS]
        lines.append(f"{task:<20}" + "".join(f"{v:>9.3f}" if v is not None else f"{'-':>9}" for v in cells))
    return "\n".join(lines)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
