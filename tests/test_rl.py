"""stage=rl end to end on CPU with the real vLLM engine: it learns, and vLLM serves exactly the trained weights.

A tiny policy is first trained briefly by cross-entropy on the RL tasks' synthetic data (counting, grounding,
arithmetic, temporal grounding, GUI clicks); then a few minutes of GRPO must raise its held-out reward.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import ENGINE_SETTINGS
from stagerun import run_stage

from mimovl.model.build import load_hf
from mimovl.rl.data import PromptDataModule
from mimovl.rl.rollout import HFRollout, Sampling, VLLMRollout

TASK_MIX = "{qa: 1.0, reasoning: 1.0, grounding: 1.0, gui: 1.0, video: 1.0}"
SFT = ["stage=sft", "stage.max_steps=110", "stage.module.lr={vit: 2e-3, projector: 2e-3, llm: 2e-3}",
       "stage.seq_len=1024", "stage.batch_size=4", f"stage.mix={TASK_MIX}"]
# Both runs read their data in this process: a DataLoader worker forked after vLLM has started would hang.
COMMON = ["data.num_workers=0", "data.generate.n_per_type=400", "data.heldout_generate.n_per_type=64"]
RL = ["stage=rl", "stage.steps=20", f"stage.mix={TASK_MIX}", "rl.prompts_per_step=8", "rl.group_size=8",
      "rl.max_new_tokens=32", "rl.max_rounds=2", "rl.heldout_per_kind=48",
      "stage.module.lr={vit: 2e-4, projector: 2e-4, llm: 2e-4}"]
# The held-out mean reward over the five tasks (48 greedy prompts each) must rise by more than MIN_GAIN, and
# box grounding (a dense reward: GIoU) by more than MIN_BOX_GAIN. Measured on this machine kind in three runs
# (RL alone, then this module twice): mean +0.137, +0.112, +0.056; grounding_box 0.06-0.07 -> 0.49-0.50 each time.
MIN_GAIN = 0.03
MIN_BOX_GAIN = 0.2
# The SFT and RL fixtures take about 3 + 5 minutes on 2 free cores; a test's timeout includes its fixtures.
FIXTURE_TIMEOUT = 1800


@pytest.fixture(scope="session")
def sft_policy(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("rl")
    return tmp, run_stage(tmp, *SFT, *COMMON)["hf_dir"]


@pytest.fixture(scope="session")
def rl_run(sft_policy, vllm_engine) -> dict:
    tmp, policy = sft_policy
    return run_stage(tmp, *RL, *COMMON, f"stage.init_from={policy}")


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(FIXTURE_TIMEOUT)
def test_rl_raises_the_heldout_reward(rl_run):
    before, after = rl_run["reward_before"], rl_run["reward_after"]
    assert set(before) == set(after) == {"math", "counting", "grounding_box", "grounding_point",
                                         "temporal_grounding"}
    gain = rl_run["mean_reward_after"] - rl_run["mean_reward_before"]
    print(f"held-out reward {rl_run['mean_reward_before']:.3f} -> {rl_run['mean_reward_after']:.3f}: "
          f"{json.dumps(before)} -> {json.dumps(after)}")
    assert gain > MIN_GAIN, (before, after)
    assert after["grounding_box"] - before["grounding_box"] > MIN_BOX_GAIN, (before, after)
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
    data = PromptDataModule(sources={}, mix={}, heldout={}, prompts_per_step=1, processor=processor)
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
                        "paths.run_root=" + str(tmp / "runs/hf_rollout"), *COMMON, f"stage.init_from={policy}")
    assert summary["steps"] == 2
    assert all(torch.isfinite(torch.tensor(summary["loss_history"])))
    assert set(summary["reward_after"]) == set(summary["reward_before"]) and summary["reward_after"]
