"""Stages 1-4 on synthetic shards: the loss falls, frozen parts stay put, resume is exact, bad data is skipped."""

import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from mimovl.model.build import build_tiny
from mimovl.model.parts import part_of
from stagerun import run_stage
from test_data_stream import corrupt_shard

pytestmark = pytest.mark.slow
STEPS = 12


def in_memory(hf_dir) -> dict[str, torch.Tensor]:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir).state_dict()


def _falls(history: list[float]) -> bool:
    return sum(history[-3:]) / 3 < sum(history[:3]) / 3 - 0.05


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    summaries = {}
    for stage in ("s1", "s2", "s3", "s4"):
        summaries[stage] = run_stage(tmp, f"stage={stage}", f"stage.max_steps={STEPS}")
    return tmp, summaries


def test_each_stage_starts_from_the_previous_export_and_its_loss_falls(chain):
    tmp, summaries = chain
    for stage, summary in summaries.items():
        assert summary["steps"] == STEPS
        previous = {"s2": "s1", "s3": "s2", "s4": "s3"}.get(stage)
        expected = summaries[previous]["hf_dir"] if previous else "mimovl.model.build.build_tiny"
        assert summary["init_from"] == expected
        assert _falls(summary["loss_history"]), (stage, summary["loss_history"])
        written = json.loads((Path(summary["output_dir"]) / "summary.json").read_text())
        assert written["last_loss"] == summary["last_loss"]


def test_frozen_parts_are_bit_identical(chain):
    tmp, summaries = chain
    init = build_tiny(seed=0)[0].state_dict()
    s1, s2 = in_memory(summaries["s1"]["hf_dir"]), in_memory(summaries["s2"]["hf_dir"])
    changed = {stage: set() for stage in ("s1", "s2")}
    for name in init:
        part = part_of(name)
        if not torch.equal(s1[name], init[name]):
            changed["s1"].add(part)
        if not torch.equal(s2[name], s1[name]):
            changed["s2"].add(part)
        if part != "projector":
            assert torch.equal(s1[name], init[name]), f"stage 1 changed frozen {name}"
        if part == "llm":
            assert torch.equal(s2[name], s1[name]), f"stage 2 changed frozen {name}"
    assert changed == {"s1": {"projector"}, "s2": {"vit", "projector"}}


class StopAtStep(pl.Callback):
    """Ends a fit early at a given step, the way a preempted job would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_from_last_checkpoint_continues_exactly(tmp_path):
    common = ["stage=s3", "stage.max_steps=6", "callbacks.checkpoint.every_n_train_steps=3"]
    straight = run_stage(tmp_path / "straight", *common)
    stopped = run_stage(tmp_path / "resumed", *common, "+callbacks.stop._target_=test_train.StopAtStep",
                        "+callbacks.stop.step=3")
    assert stopped["steps"] == 3
    resumed = run_stage(tmp_path / "resumed", *common)
    assert resumed["steps"] == straight["steps"] == 6
    assert resumed["loss_history"][:3] == stopped["loss_history"]
    assert resumed["loss_history"] == pytest.approx(straight["loss_history"], abs=1e-6)
    a, b = in_memory(straight["hf_dir"]), in_memory(resumed["hf_dir"])
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_corrupt_samples_are_skipped_counted_and_training_finishes(tmp_path):
    shard = tmp_path / "bad-000000.tar"
    good = corrupt_shard(shard, 0)
    summary = run_stage(
        tmp_path, "data=shards", f"+data.sources.caption={shard}", "data.num_workers=1", "stage.max_steps=3",
        "stage.seq_len=256", "stage.batch_size=1", "data.shuffle_buffer=1", "data.pack_buffer=2",
    )
    assert summary["steps"] == 3
    # A full pass over the shard skips its 4 bad samples (exact per-pass counts: tests/test_data_stream.py).
    assert summary["skipped"] >= 4 and len(good) == 4


def test_multirun_jobs_get_separate_outputs(tmp_path):
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "src/run.py"), "-m", "debug=fast", "stage.max_steps=2", "logger=csv",
           f"paths.runs_dir={tmp_path}/runs", f"paths.data_dir={tmp_path}/data", "data.generate.n_per_type=16",
           "stage.module.lr.projector=1e-3,1e-2"]
    subprocess.run(cmd, check=True, cwd=tmp_path, timeout=600)
    summaries = sorted((tmp_path / "runs/multirun").glob("*/*/s1/summary.json"))  # not under runs/debug
    assert [p.parent.parent.name for p in summaries] == ["0", "1"]
    assert all(json.loads(p.read_text())["steps"] == 2 for p in summaries)
