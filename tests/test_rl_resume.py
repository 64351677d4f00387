"""kill -9 in the middle of stage=rl, then the same command again: the resumed run is the uninterrupted one.

Same prompts at every step (the stream's position, refills and the easy pool's prompts and random state are in
the checkpoint), same sampled responses (each rollout call seeds the engine's sampler), same weights at the end,
and rollouts.jsonl without the rows the killed run wrote after its last checkpoint.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROGRAMME, USER_ENV
from stagerun import quick_overrides, run_stage
from test_rl import FIXTURE_TIMEOUT, TASK_MIX

from mimovl.model.build import load_hf

ROOT = Path(__file__).resolve().parents[1]


def rl_overrides(root: Path, policy: str, run_root: Path) -> list[str]:
    return [
        "stage=rl", f"stage.init_from={policy}", "stage.steps=6", f"stage.mix={TASK_MIX}", "rl.prompts_per_step=4",
        "rl.group_size=4", "rl.max_new_tokens=16", "rl.heldout_per_kind=2", "rl.table_every=1", "rl.table_rows=64",
        "rl.easy_pool_probability=0.5",  # the pool is used, so its random state and prompts must survive the kill
        "callbacks.checkpoint.every_n_train_steps=2", f"paths.run_root={run_root}", *PROGRAMME,
    ]


def rows(run_root: Path) -> list[dict]:
    path = run_root / "rl/rollouts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(FIXTURE_TIMEOUT)
def test_rl_killed_after_a_checkpoint_resumes_to_the_uninterrupted_run(programme, capsys):
    root, policy = programme["root"], str(Path(programme["stages"]["s4"]) / "hf")
    whole = run_stage(root, *rl_overrides(root, policy, root / "runs/resume_whole"))

    cut = root / "runs/resume_cut"
    command = [sys.executable, str(ROOT / "src/run.py"), *quick_overrides(root, *rl_overrides(root, policy, cut))]
    child = subprocess.Popen(command, cwd=root, env=USER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while not any(row["step"] >= 3 for row in rows(cut)):  # step 3 began: the step-2 checkpoint is written
        assert child.poll() is None, child.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not (cut / "rl/summary.json").exists()

    capsys.readouterr()
    resumed = run_stage(root, *rl_overrides(root, policy, cut))
    assert f"rl: resuming from {cut / 'rl/checkpoints/last.ckpt'} (step " in capsys.readouterr().out
    assert resumed["steps"] == whole["steps"] == 6
    assert resumed["loss_history"] == pytest.approx(whole["loss_history"], abs=1e-6)
    assert resumed["reward_before"] == whole["reward_before"] and resumed["reward_after"] == whole["reward_after"]
    # the per-step history and the tokens trained on (rl.update_tokens counts them) survive the kill, once each
    assert [row["step"] for row in resumed["history"]] == list(range(6))
    assert resumed["history"] == whole["history"] and resumed["trained_tokens"] == whole["trained_tokens"] > 0
    # Every step trained on the same prompts, drew the same responses and rewards; no step is listed twice.
    assert [(r["step"], r["key"], r["response"], r["reward"]) for r in rows(cut)] == \
           [(r["step"], r["key"], r["response"], r["reward"]) for r in rows(root / "runs/resume_whole")]
    a, _ = load_hf(whole["hf_dir"])
    b, _ = load_hf(resumed["hf_dir"])
    assert max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values())) < 1e-6
    start, _ = load_hf(policy)
    assert max((x - y).abs().max().item() for x, y in zip(a.parameters(), start.parameters())) > 1e-4
