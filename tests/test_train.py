"""Stages 1-4 on synthetic shards: the loss falls, frozen parts stay put, resume is exact, bad data is skipped."""

import json
from pathlib import Path

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from mimovl.model.build import build_tiny
from mimovl.model.parts import part_of
from stagerun import run_stage

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
