"""Chunked losses (`mimovl.model.logits`): the values and gradients of the full-logits path, float32, 1e-6, on
a packed batch with images, several segments and unequal lengths; and the memory they save."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import USER_ENV
from mimovl.data.encode import IGNORE, encode
from mimovl.data.packing import collate_rows, pack_rows
from mimovl.errors import UsageError
from mimovl.model.build import build_tiny
from mimovl.model.logits import check_chunk, chunked_token_losses, token_losses
from mimovl.model.packed import PackedVLM
from test_packing import _samples

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "logits_memory.py"


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_losses_equal_full_logits_in_value_and_gradient(temperature):
    model, processor = build_tiny(seed=0)
    model.train()
    encoded = [encode(s, processor) for s in _samples()]
    rows = list(pack_rows(encoded, seq_len=max(map(len, encoded)) + 30, buffer=8))
    batch = collate_rows(rows, seq_len=max(r.length for r in rows) + 3, pad_id=processor.tokenizer.pad_token_id)
    learned = batch["targets"] != IGNORE
    results = []
    for chunk in (0, 7):  # 7 tokens a chunk: many chunks, the last one short
        net = PackedVLM(model, logits_chunk=chunk)
        model.zero_grad()
        losses = net(batch, learned, losses=True, temperature=temperature)
        # A weighted sum, as the RL loss takes (per-token weights of either sign).
        weights = torch.linspace(-1.0, 2.0, losses.numel())
        (losses * weights).sum().backward()
        results.append((losses.detach(), _grads(model)))
    (full, full_grads), (chunked, chunked_grads) = results
    reference = token_losses(PackedVLM(model)(batch, learned) / temperature, batch["targets"][learned])
    torch.testing.assert_close(full, reference.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=0)
    assert chunked_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():  # within 1e-6 of the gradient's scale (float32 sums in another order)
        assert (chunked_grads[name] - grad).abs().max() <= 1e-6 * grad.abs().max(), name


def test_ignored_targets_get_zero_loss_and_no_gradient():
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(10, 8, requires_grad=True)
    targets = torch.randint(0, 50, (10,))
    targets[[2, 7]] = IGNORE
    losses = chunked_token_losses(hidden, head, targets, chunk=3)
    assert losses[[2, 7]].tolist() == [0.0, 0.0]
    losses.sum().backward()
    assert hidden.grad[[2, 7]].abs().max() == 0 and hidden.grad[0].abs().max() > 0


def test_a_bad_chunk_setting_is_refused():
    for bad in (-1, 2.5, True, "4096"):
        with pytest.raises(UsageError, match="model.logits_chunk"):
            check_chunk(bad)


@pytest.mark.slow
def test_chunking_keeps_the_peak_below_a_third_of_the_full_logits_peak():
    """8K response tokens at MiMo's 151,680-token vocabulary, loss + backward, each way in its own process
    (benchmarks/logits_memory.py; hidden 64 keeps the matmuls short, the logits are as large as at 4096).
    Measured at hidden 512: 3.24 GB chunked against 15.57 GB."""
    peaks = {}
    for chunk in (0, 1024):
        command = [sys.executable, str(BENCHMARK), "--tokens", "8192", "--hidden", "64", "--chunk", str(chunk)]
        out = subprocess.run(command, env=USER_ENV, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[chunk] = float(out.stdout.strip().splitlines()[-1].split("=")[1])
    assert peaks[1024] < peaks[0] / 3, peaks
