"""stage=study: the interference study's small version (conftest's `study`: math and grounding_box, a budget of a
few rollout steps) from the session programme's stage-4 policy, with the real vLLM engine."""

import json
import math
from pathlib import Path

import pytest
from conftest import PROGRAMME, STUDY
from omegaconf import OmegaConf
from stagerun import run_study
from test_rl import FIXTURE_TIMEOUT

from mimovl.errors import UsageError
from mimovl.study import arms, check_study

TASKS = ["math", "grounding_box"]
BUDGET, STEP_CAP = 800, 4
ARMS = {"single_math", "single_grounding_box", "mix", "mix_vanilla"}


def arm_summary(study: dict, name: str) -> dict:
    return json.loads((Path(study["arms"][name]["output_dir"]) / "summary.json").read_text())


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(FIXTURE_TIMEOUT)
def test_the_table_has_every_cell_from_the_arm_that_made_it(study):
    assert study["tasks"] == TASKS and set(study["arms"]) == ARMS
    assert Path(study["arms"]["mix"]["output_dir"]) == study["dir"] / "mix"
    assert json.loads((study["dir"] / "summary.json").read_text())["table"] == study["table"]
    mix = arm_summary(study, "mix")
    for task in TASKS:
        row = study["table"][task]
        assert len(row) == 12 and all(v is not None and math.isfinite(v) for v in row.values()), (task, row)
        single = arm_summary(study, f"single_{task}")
        assert row["reward_single"] == single["reward_after"][task] and row["reward_mix"] == mix["reward_after"][task]
        assert row["length_vanilla"] == arm_summary(study, "mix_vanilla")["length_after"][task]
        # one SFT policy, greedy held-out answers: every arm starts from the same figures
        for figure in ("reward", "length", "think"):
            assert single[f"{figure}_before"][task] == row[f"{figure}_before"] == mix[f"{figure}_before"][task]
    # math's answers think first; box answers never do
    assert study["table"]["math"]["think_before"] > 0.5 and study["table"]["grounding_box"]["think_before"] == 0.0


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(FIXTURE_TIMEOUT)
def test_each_arm_trains_only_its_tasks_on_one_token_budget(study):
    stopped_by_budget = 0
    for name, arm in study["arms"].items():
        history = arm["history"]
        assert arm["rollout_steps"] == len(history) <= STEP_CAP
        tokens = [row["trained_tokens"] for row in history]
        assert tokens == sorted(tokens) and tokens[-1] == arm["trained_tokens"] == arm_summary(study, name)[
            "trained_tokens"]
        if arm["trained_tokens"] >= BUDGET:  # stopped at the first step that spent the budget
            stopped_by_budget += 1
            assert len(tokens) == 1 or tokens[-2] < BUDGET, (name, tokens)
        else:
            assert len(history) == STEP_CAP, (name, tokens)
        drawn = {key.split("/", 1)[1] for row in history for key in row if key.startswith("reward/")} - {"mean"}
        summary = arm_summary(study, name)
        expected = {name.removeprefix("single_")} if name.startswith("single_") else set(TASKS)
        assert drawn <= expected and set(summary["reward_before"]) == set(summary["reward_after"]) == expected
    assert stopped_by_budget >= 2, study["arms"]
    # vanilla GRPO: two clipped updates per rollout; the report's arm: one
    assert study["vanilla"] == {"epochs": 2, "clip_low": 0.2, "clip_high": 0.2}
    assert study["arms"]["mix"]["steps"] == study["arms"]["mix"]["rollout_steps"]
    assert study["arms"]["mix_vanilla"]["steps"] == 2 * study["arms"]["mix_vanilla"]["rollout_steps"]


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(FIXTURE_TIMEOUT)
def test_rerunning_the_study_skips_finished_arms(study, programme, capsys):
    again = run_study(programme["root"], *PROGRAMME, *STUDY)
    out = capsys.readouterr().out
    assert all(f"study: {name} is done" in out for name in ARMS) and "study: running" not in out
    assert again["table"] == study["table"]


def test_the_arms_of_a_study():
    study = OmegaConf.create({"tasks": ["math", "counting"], "update_tokens": 500, "steps": 7,
                              "vanilla": {"epochs": 2, "clip_low": 0.2}})
    plan = arms(study, Path("/r/study"))
    assert plan == {
        "single_math": ["rl.tasks=[math]", "rl.update_tokens=500", "stage.steps=7",
                        "paths.output_dir=/r/study/single_math"],
        "single_counting": ["rl.tasks=[counting]", "rl.update_tokens=500", "stage.steps=7",
                            "paths.output_dir=/r/study/single_counting"],
        "mix": ["rl.tasks=[math,counting]", "rl.update_tokens=500", "stage.steps=7", "paths.output_dir=/r/study/mix"],
        "mix_vanilla": ["rl.tasks=[math,counting]", "rl.update_tokens=500", "stage.steps=7", "rl.loss.epochs=2",
                        "rl.loss.clip_low=0.2", "paths.output_dir=/r/study/mix_vanilla"],
    }


@pytest.mark.parametrize("key, value, fragment", [
    ("tasks", ["algebra"], "stage.tasks=\\['algebra'\\]: must list distinct rule tasks"),
    ("tasks", ["math", "math"], "distinct"),
    ("tasks", [], "stage.tasks=\\[\\]"),
    ("update_tokens", 0, "stage.update_tokens=0: must be a positive integer"),
    ("steps", None, "stage.steps=None"),
])
def test_wrong_study_settings_are_usage_errors(key, value, fragment):
    study = OmegaConf.create({"tasks": ["math"], "update_tokens": 500, "steps": 7, "vanilla": {}, key: value})
    with pytest.raises(UsageError, match=fragment):
        check_study(study)
