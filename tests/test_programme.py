"""stage=all: the whole programme at the tiny scale (conftest's `programme`), its table, eval, and resuming."""

import json
from pathlib import Path

import pytest
from conftest import PROGRAMME
from stagerun import run_programme

STAGES = ["s1", "s2", "s3", "s4", "rm_text", "rm", "rl", "eval"]
RULE_TASKS = {"math", "counting", "grounding_box", "grounding_point", "temporal_grounding"}


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_programme_runs_every_stage_from_the_previous_export(programme):
    assert list(programme["stages"]) == STAGES
    summaries = {name: json.loads((Path(d) / "summary.json").read_text()) for name, d in programme["stages"].items()}
    assert summaries["s1"]["init_from"].endswith("build_tiny")  # nothing before it: the tiny model
    for stage, previous in [("s2", "s1"), ("s3", "s2"), ("s4", "s3"), ("rm_text", "s4"), ("rm", "s4"),
                            ("rl", "s4"), ("eval", "rl")]:
        assert summaries[stage]["init_from"] == str(Path(programme["stages"][previous]) / "hf"), stage
    # the tiny scale's step counts (conf/recipe_values/mimo_vl/tiny/), not the stage files' defaults
    assert [summaries[s]["steps"] for s in ("s1", "s2", "s3", "s4", "rm_text", "rm", "rl")] == [
        30, 30, 40, 220, 100, 200, 60]
    assert summaries["s4"]["last_loss"] < summaries["s1"]["first_loss"]
    for stage in STAGES[:-1]:
        assert (Path(programme["stages"][stage]) / "hf/config.json").exists(), stage


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_reward_models_rank_heldout_pairs_well_above_chance(programme):
    """The reward models RL learns from rank held-out pairs (data.heldout.preference, never trained on; chance 0.5).
    Measured with stage=rm alone from the programme's s4 export, seeds 0, 1, 2: see the numbers below."""
    rm, rm_text = (json.loads((Path(programme["stages"][name]) / "summary.json").read_text())
                   for name in ("rm", "rm_text"))
    # data.heldout_generate.n_per_type=64: 64 pairs, half of them text-only (sums, manners)
    assert (rm["heldout_pairs"], rm_text["heldout_pairs"]) == (64, 32)
    assert rm["heldout_accuracy"] > 0.7, rm["heldout_accuracy"]  # measured 0.80, 0.78, 0.78
    assert rm_text["heldout_accuracy"] > 0.75, rm_text["heldout_accuracy"]  # measured 0.91, 0.84, 0.84


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_programme_table_reports_rl_and_eval_per_task(programme):
    table = programme["table"]
    assert RULE_TASKS | {"open_text", "open_vision"} == set(table)
    rl = json.loads((Path(programme["stages"]["rl"]) / "summary.json").read_text())
    evaluation = json.loads((Path(programme["stages"]["eval"]) / "summary.json").read_text())
    for task, row in table.items():
        assert row == {"before_rl": rl["reward_before"][task], "after_rl": rl["reward_after"][task],
                       "eval": evaluation["scores"][task]}
    assert programme["mean_reward_after"] > programme["mean_reward_before"]
    written = json.loads((programme["root"] / "runs/mimo_vl/all/summary.json").read_text())
    assert written["table"] == table


# Held-out reward gained by RL (48 greedy prompts per task), this programme's settings at seeds 0 / 1 / 2 with one
# thread (OMP_NUM_THREADS=1), then seed 0 with two (this test's run on a 2-core machine):
#   counting            +0.167 / +0.125 / +0.250,  +0.167
#   open_text           +0.630 / +0.556 / +0.426,  +0.427   (the text reward model's task)
#   open_vision         +0.144 / +0.054 / +0.258,  +0.024   (the multimodal reward model's task)
#   grounding_box       +0.066 / +0.046 / -0.097,  +0.060
#   grounding_point     -0.062 / -0.021 / +0.021,  +0.000
#   math                +0.000 / +0.000 / +0.021,  -0.021
#   temporal_grounding  +0.101 / -0.007 / -0.025,  +0.081
# Counting and open_text are well above seed noise and asserted below their smallest gain; open_vision gains in
# every run but by as little as 0.024. The other rule tasks are within noise: the tiny SFT policy answers them
# without reading the picture (benchmarks/image_reliance.py), so RL can only move a constant answer per task
# (benchmarks/learnability.py measures which tasks a tiny model can learn to read).
MIN_GAIN = {"counting": 0.06, "open_text": 0.2}


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rl_gains_on_the_tasks_it_learns(programme):
    table = programme["table"]
    gains = {task: table[task]["after_rl"] - table[task]["before_rl"] for task in MIN_GAIN}
    assert all(gains[task] > margin for task, margin in MIN_GAIN.items()), gains


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_eval_scores_every_task_with_the_report_settings(programme):
    directory = Path(programme["stages"]["eval"])
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["settings"] == {"temperature": 0.0, "max_new_tokens": None, "max_pixels": 4096 * 28 * 28}
    assert set(summary["scores"]) == RULE_TASKS | {"open_text", "open_vision"}
    # rl.heldout_per_kind at the tiny scale: 48 per task; open-ended kinds have what the held-out shards hold
    assert {task: summary["prompts"][task] for task in RULE_TASKS} == {task: 48 for task in RULE_TASKS}
    assert 0 < summary["prompts"]["open_text"] <= 48 and 0 < summary["prompts"]["open_vision"] <= 48
    assert summary["metrics"]["grounding_box"].startswith("GIoU")
    assert summary["metrics"]["temporal_grounding"] == "segment IoU"
    rows = [json.loads(line) for line in (directory / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == sum(summary["prompts"].values())
    for kind, score in summary["scores"].items():  # the summary is the mean of the scored responses
        rewards = [r["reward"] for r in rows if r["kind"] == kind]
        assert score == pytest.approx(sum(rewards) / len(rewards))
    assert summary["mean_score"] == pytest.approx(sum(summary["scores"].values()) / len(summary["scores"]))
    metrics = (directory / "csv/version_0/metrics.csv").read_text()
    assert "eval/grounding_box" in metrics


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rerunning_the_programme_skips_finished_stages(programme, capsys):
    again = run_programme(programme["root"], *PROGRAMME)
    out = capsys.readouterr().out
    assert all(f"all: {name} is done" in out for name in STAGES), out
    assert again["table"] == programme["table"]


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_per_type_losses_are_logged_only_where_present(programme):
    """A loss per sample type exists only at steps whose batch holds that type; a stale carried-over value would
    repeat exactly at the next step (Lightning's self.log does that for keys missing from a step), which a mean
    over a new batch does not. (RL's per-task figures use the same path, mimovl.metrics.log_present.)"""
    import csv

    rows = list(csv.DictReader((Path(programme["stages"]["s4"]) / "csv/version_0/metrics.csv").open()))
    names = [k for k in rows[0] if k.startswith("train/loss_")]
    assert len(names) == 9
    for name in names:
        points = [(int(r["step"]), r[name]) for r in rows if r[name]]
        assert 0 < len(points) <= 220, name  # at most one value per step (accumulate=1)
        assert not [a for a, b in zip(points, points[1:]) if b[0] == a[0] + 1 and b[1] == a[1]], name
