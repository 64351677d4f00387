"""stage=rl end to end on CPU with the real vLLM engine: it learns, and vLLM serves exactly the trained weights.

The RL run is the one of the session's programme (`+recipe=mimo_vl stage=all` at the tiny scale: conftest's
`programme`): a tiny policy trained by cross-entropy through stages 1-4 on the synthetic data (counting,
grounding, arithmetic, temporal grounding, GUI clicks among it), then a few minutes of GRPO that must raise its
held-out reward.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import ENGINE_SETTINGS, PROGRAMME
from stagerun import run_stage

from mimovl.model.build import load_hf
from mimovl.rl.data import PromptDataModule
from mimovl.generate.engines import HFRollout, Sampling, VLLMRollout

TASK_MIX = "{qa: 1.0, reasoning: 1.0, grounding: 1.0, gui: 1.0, video: 1.0}"
# The held-out gain per task, over seeds, and which tasks are asserted: tests/test_programme.py (MIN_GAIN).
ALL_TASKS = ("math", "counting", "grounding_box", "grounding_point", "temporal_grounding", "open_text",
             "open_vision")
RULE_TASKS = ALL_TASKS[:5]
MIN_GAIN = 0.05  # the mean over every task: +0.149 / +0.108 / +0.122 (seeds 0-2, one thread), +0.105 (seed 0, two)
# The programme (all stages at the tiny scale) takes about 4-5 minutes on 2 free cores; a test's timeout
# includes its fixtures.
FIXTURE_TIMEOUT = 1800


@pytest.fixture(scope="session")
def sft_policy(programme) -> tuple[Path, str]:
    """(the programme's directory, stage 4's export: the policy RL started from)."""
    return programme["root"], str(Path(programme["stages"]["s4"]) / "hf")


@pytest.fixture(scope="session")
def rl_run(programme) -> dict:
    return json.loads((Path(programme["stages"]["rl"]) / "summary.json").read_text())


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(FIXTURE_TIMEOUT)
def test_rl_raises_the_heldout_reward(rl_run):
    before, after = rl_run["reward_before"], rl_run["reward_after"]
    assert set(before) == set(after) == set(RULE_TASKS) | {"open_text", "open_vision"}  # both reward models
    gain = sum(after[t] - before[t] for t in ALL_TASKS) / len(ALL_TASKS)
    print(f"held-out reward: {json.dumps(before)} -> {json.dumps(after)}, mean gain {gain:.3f}")
    assert gain > MIN_GAIN, (before, after)
    written = json.loads((Path(rl_run["output_dir"]) / "summary.json").read_text())
    assert written["reward_after"] == after
    assert (Path(rl_run["output_dir"]) / "rollouts.jsonl").stat().st_size > 0


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(FIXTURE_TIMEOUT)
def test_vllm_serves_the_trained_weights_after_sync(rl_run, sft_policy, vllm_engine):
    """After the last optimizer step and its sync, vLLM's greedy tokens equal transformers' from the export, on
    image prompts. (Video prompts diverge after a few tokens, by more than a near tie: a known gap between
    vLLM's and transformers' video paths, left as its own issue.)"""
    engine = VLLMRollout(Path(rl_run["output_dir"]) / "rollout_start", **ENGINE_SETTINGS)  # the run's engine
    trained, processor = load_hf(rl_run["hf_dir"])
    start, _ = load_hf(sft_policy[1])
    changed = max((a - b).abs().max().item() for a, b in zip(trained.parameters(), start.parameters()))
    assert changed > 1e-4  # RL moved the weights, so equal tokens mean the sync carried them
    data = PromptDataModule(sources={}, mix={}, heldout={}, processor=processor)
    data.heldout_sources = {t: {"urls": str(sft_policy[0] / f"data/synthetic/heldout/{t}/*.tar"), "weight": 1.0}
                            for t in ("qa", "grounding", "gui")}
    data.heldout_per_kind = 3
    prompts = data.heldout()
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=24)
    served = engine.generate(prompts, greedy, processor)
    reference = HFRollout(trained.eval()).generate(prompts, greedy, processor)
    assert len(prompts) >= 6
    for prompt, a, b in zip(prompts, served, reference):
        assert a[0].token_ids == b[0].token_ids, prompt.key


@pytest.mark.slow
@pytest.mark.timeout(FIXTURE_TIMEOUT)
def test_transformers_rollout_backend_trains(sft_policy):
    tmp, policy = sft_policy
    summary = run_stage(tmp, "stage=rl", "rollout=hf", "stage.steps=2", f"stage.mix={TASK_MIX}",
                        "rl.prompts_per_step=2", "rl.group_size=4", "rl.max_new_tokens=16", "rl.heldout_per_kind=2",
                        "paths.run_root=" + str(tmp / "runs/hf_rollout"), *PROGRAMME, f"stage.init_from={policy}")
    assert summary["steps"] == 2
    assert all(torch.isfinite(torch.tensor(summary["loss_history"])))
    assert set(summary["reward_after"]) == set(summary["reward_before"]) and summary["reward_after"]
