"""The GPU script (benchmarks/gpu/run.sh) on a machine without CUDA: it says so and succeeds; its packed rows
(images, several samples, padding) run through the tiny model."""

import subprocess
import sys
from pathlib import Path

import torch

from conftest import USER_ENV
from mimovl.data.encode import IGNORE
from mimovl.model.build import build_tiny
from mimovl.model.packed import PackedVLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

import step  # noqa: E402


def test_the_gpu_script_never_fails():
    out = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--parts", "attention"], env=USER_ENV,
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    if not torch.cuda.is_available():
        assert "gpu_skipped=no CUDA device" in out.stdout


def test_its_packed_rows_train_the_tiny_model(monkeypatch):
    model, _ = build_tiny(seed=0)
    monkeypatch.setattr(step, "VOCAB", model.config.text_config.vocab_size)
    batch = step.packed_rows(model, 2, 700, grid=8, generator=torch.Generator().manual_seed(0))
    assert batch["image_grid_thw"].shape[0] == 4 and (batch["segment_ids"] == 0).any()
    losses = PackedVLM(model)(batch, batch["targets"] != IGNORE, losses=True)
    losses.mean().backward()
    assert torch.isfinite(losses).all() and model.model.visual.merger.mlp[0].weight.grad.abs().sum() > 0


def test_its_shared_prompt_rows_match_the_dense_mask(monkeypatch):
    model, _ = build_tiny(seed=0)
    monkeypatch.setattr(step, "VOCAB", model.config.text_config.vocab_size)
    plain = step.packed_rows(model, 2, 700, grid=8, images_per_row=1, generator=torch.Generator().manual_seed(0))
    shared = {**plain, "prefix_ids": torch.where((plain["segment_ids"] == 2) | (plain["segment_ids"] == 3), 1, 0)}
    from mimovl.model.attention import use_attention

    with torch.no_grad():
        use_attention(model, "sdpa_dense")
        reference = PackedVLM(model)(shared)
        use_attention(model, "sdpa_varlen")
        torch.testing.assert_close(PackedVLM(model)(shared), reference, atol=1e-5, rtol=0)
