"""Non-finite losses and gradients: the step is skipped and counted, a run that stays non-finite stops with one
message, and nothing non-finite is written to a checkpoint, an export or summary.json."""

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file

from mimovl.fit.finite import NonFiniteGuard, TrainingDiverged
from stagerun import run_stage


class Line(pl.LightningModule):
    """y = w x + b on batches of 1; `bad` step indices get an infinite input (so a NaN/inf loss and gradient)."""

    def __init__(self, bad: set[int], manual: bool = False):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.bad, self.automatic_optimization = bad, not manual
        self.weights: list[torch.Tensor] = []  # the weights after each step

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(100, 1, 2), batch_size=None)

    def training_step(self, batch, index):
        x = batch * float("inf") if index in self.bad else batch
        loss = (self.layer(x) - 3.0).pow(2).mean()
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            return None
        return loss

    def on_train_batch_end(self, *args):
        self.weights.append(torch.cat([p.detach().flatten().clone() for p in self.parameters()]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.1)


def fit(module: Line, steps: int, guard: NonFiniteGuard, tmp_path) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, callbacks=[guard], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(module)
    return trainer


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_a_non_finite_step_leaves_weights_and_optimizer_as_they_were(manual, tmp_path):
    module, guard = Line(bad={2, 3}, manual=manual), NonFiniteGuard(max_in_a_row=3)
    fit(module, 6, guard, tmp_path)
    w = module.weights
    assert len(w) == 6 and all(torch.isfinite(x).all() for x in w)
    assert torch.equal(w[2], w[1]) and torch.equal(w[3], w[1])  # skipped: not even weight decay moved them
    assert not torch.equal(w[4], w[3]) and not torch.equal(w[1], w[0])  # good steps still update
    assert guard.skipped == 2 and guard.in_a_row == 0 and guard.summary() == {"nonfinite_steps": 2}


def test_the_run_stops_after_max_in_a_row_non_finite_steps(tmp_path):
    module, guard = Line(bad=set(range(1, 100))), NonFiniteGuard(max_in_a_row=3)
    with pytest.raises(TrainingDiverged, match="3 optimizer steps in a row had non-finite gradients"):
        fit(module, 50, guard, tmp_path)
    assert guard.skipped == 3
    assert all(torch.equal(x, module.weights[0]) for x in module.weights[1:])


def no_non_finite_file(directory: Path) -> list[str]:
    """Every JSON, safetensors and checkpoint file under `directory` read back: the names checked; fails on any
    NaN or infinity."""

    def refuse(constant):
        raise AssertionError(f"non-finite JSON constant {constant}")

    checked = []
    for path in sorted(directory.rglob("*")):
        if path.suffix == ".json":
            json.loads(path.read_text(), parse_constant=refuse)
        elif path.suffix == ".safetensors":
            assert all(torch.isfinite(t).all() for t in load_file(path).values()), path
        elif path.suffix == ".ckpt":
            state = torch.load(path, weights_only=False)["state_dict"]
            assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path
        else:
            continue
        checked.append(path.name)
    return checked


@pytest.mark.slow
def test_a_diverging_stage_stops_with_a_message_and_writes_nothing_non_finite(tmp_path):
    """The issue's case: stage 1 with a projector learning rate of 1e20 (once: `loss 6.544 -> nan`, exit 0, a NaN
    projector in last.ckpt and hf/, and `NaN` in summary.json)."""
    with pytest.raises(TrainingDiverged, match="Lower the learning rate"):
        run_stage(tmp_path, "stage=s1", "stage.module.lr.projector=1e20", "stage.max_steps=40", "data.num_workers=0",
                  "callbacks.checkpoint.every_n_train_steps=1")
    out = tmp_path / "runs/mimovl/s1"
    assert not (out / "summary.json").exists() and not (out / "hf").exists()
    checked = no_non_finite_file(out)
    assert "last.ckpt" in checked  # the checkpoints written before it diverged, all finite
