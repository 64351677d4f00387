"""stage=rl on 2 CPU processes (FSDP2) with one real vLLM engine per rank ("external_launcher" executor)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import USER_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.vllm
@pytest.mark.slow
def test_two_rank_rl_run_rolls_out_different_prompts_per_rank(tmp_path):
    cmd = [sys.executable, str(ROOT / "src/run.py"), "stage=rl", "strategy=fsdp2", "trainer.accelerator=cpu",
           "trainer.devices=2", "logger=csv", "stage.init_from=null", "stage.steps=2", "rl.prompts_per_step=2",
           "rl.group_size=4", "rl.max_new_tokens=16", "rl.heldout_per_kind=2", "data.num_workers=0",
           "data.generate.n_per_type=32",
           "+data.generate.shard_size=16",  # two shards per source: each rank streams its own (disjoint prompts)
           "data.heldout_generate.n_per_type=8", "stage.mix={qa: 1.0, grounding: 1.0}",
           f"paths.runs_dir={tmp_path}/runs", f"paths.data_dir={tmp_path}/data", "trainer.enable_progress_bar=false",
           "hydra.verbose=mimovl.rl.callback"]  # its per-rank debug line: which prompts each rank trained on
    done = subprocess.run(cmd, cwd=tmp_path, env=USER_ENV, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]

    summary = json.loads((tmp_path / "runs/mimovl/rl/summary.json").read_text())
    assert summary["steps"] == 2
    assert isinstance(summary["reward_before"], dict) and summary["reward_before"]
    assert set(summary["reward_after"]) == set(summary["reward_before"])

    # Both ranks' logging reaches the console: "step S, rank R trains on [keys]".
    keys = {}
    for step, rank, names in re.findall(r"step (\d+), rank (\d) trains on (\[.*\])", done.stdout + done.stderr):
        keys.setdefault(int(rank), set()).update(json.loads(names))
    assert set(keys) == {0, 1}, done.stdout[-4000:]
    print(f"prompts trained on per rank: {keys}")
    assert keys[0] and keys[1] and not keys[0] & keys[1]  # each rank drew its own share of the prompt stream
