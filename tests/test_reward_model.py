"""Bradley-Terry reward models: stage rm ranks held-out synthetic pairs, stage rm_text reads text only, the loss
is Bradley-Terry's, an exported scorer equals the training model, and the HTTP service equals the scorer."""

import itertools
import json
import logging
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from mimovl.data.packing import Row
from mimovl.data.pairs import collate_pairs, encode_pair, is_text_only
from mimovl.data.preference import PairStream, PreferenceDataModule
from mimovl.data.stream import mixed_stream
from mimovl.data.synthetic import ensure_synthetic, make_sample
from mimovl.model.build import build_tiny
from mimovl.model.parts import part_of
from mimovl.rewards import client
from mimovl.model.reward import RewardModelScorer
from mimovl.rewards.client import HTTPRewardScorer, RewardServiceError
from mimovl.stages.reward_model import RewardModule, heldout_counts, pair_losses
from mimovl.model.sharding import full_state_dict
from stagerun import run_stage

pytestmark = pytest.mark.slow
RM_STEPS = 1000  # stage rm's default
PAIRS = "data.generate.n_per_type=1000", "+data.generate.types=[preference]"  # preference shards only


def _prompt(sample_type: str, index: int) -> dict:
    """A synthetic chat sample without its answer: a prompt to score."""
    sample = make_sample(sample_type, index, split="heldout")
    return {**sample, "messages": sample["messages"][:-1]}


def _accuracy(scorer, pairs: list[dict]) -> float:
    chosen = scorer.score(pairs, [p["meta"]["chosen"] for p in pairs])
    rejected = scorer.score(pairs, [p["meta"]["rejected"] for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    summary = run_stage(tmp, "stage=rm", *PAIRS)
    shards = ensure_synthetic(tmp / "data" / "synthetic", n_per_type=200, split="heldout", types=("preference",))
    heldout = list(mixed_stream({"heldout": {"urls": shards["preference"]}}, seed=0, shuffle_buffer=0,
                                resample=False))
    return summary, heldout


def test_rm_ranks_heldout_pairs_far_better_than_chance(rm_run):
    summary, heldout = rm_run
    assert summary["steps"] == RM_STEPS and summary["modality"] == "vision"
    history = summary["loss_history"]
    assert sum(history[-50:]) / 50 < sum(history[:50]) / 50 - 0.2, history  # measured 0.55 -> 0.15
    hf_dir = Path(summary["hf_dir"])
    assert json.loads((hf_dir / "reward_model.json").read_text()) == {"modality": "vision"}
    scorer = RewardModelScorer(hf_dir)
    text_only = [s for s in heldout if is_text_only(s)]
    multimodal = [s for s in heldout if not is_text_only(s)]
    assert len(text_only) == len(multimodal) == 100
    # Measured (chance 0.5) at seeds 0, 1, 2 (conf/stage/rm.yaml): overall 0.905, 0.89, 0.835; text-only 0.96, 0.98,
    # 0.82; multimodal 0.85, 0.80, 0.85.
    accuracy = {"all": _accuracy(scorer, heldout), "text": _accuracy(scorer, text_only),
                "vision": _accuracy(scorer, multimodal)}
    assert accuracy["all"] >= 0.75 and accuracy["text"] >= 0.8 and accuracy["vision"] >= 0.7, accuracy


def test_rm_text_trains_on_text_only_pairs(tmp_path):
    summary = run_stage(tmp_path, "stage=rm_text", "stage.max_steps=6", "data.generate.n_per_type=48",
                        "+data.generate.types=[preference]", "data.heldout_generate.n_per_type=16",
                        "stage.heldout_pairs=6")
    assert summary["steps"] == 6 and summary["modality"] == "text" and summary["pairs"] >= 6 * 2
    # The held-out score after training is the exported scorer's on the same pairs: the first 6 text-only ones.
    heldout = [s for s in mixed_stream({"h": {"urls": str(tmp_path / "data/synthetic/heldout/preference/*.tar")}},
                                       seed=0, shuffle_buffer=0, resample=False) if is_text_only(s)][:6]
    assert summary["heldout_pairs"] == 6
    assert summary["heldout_accuracy"] == _accuracy(RewardModelScorer(summary["hf_dir"]), heldout)
    # No image reached the model: the trainable ViT and projector got zero gradients and kept their start values.
    start = build_tiny(seed=0)[0].state_dict()
    trained = Qwen2_5_VLForConditionalGeneration.from_pretrained(summary["hf_dir"]).state_dict()
    changed = {part_of(name) for name in start if not torch.equal(start[name], trained[name])}
    assert changed == {"llm"}
    scorer = RewardModelScorer(summary["hf_dir"])
    assert scorer.modality == "text"
    sum_question = make_sample("preference", 1)  # variants cycle: colour, sum, count, manners
    assert is_text_only(sum_question)
    assert 0.0 <= scorer.score([sum_question], ["7"])[0] <= 1.0
    with pytest.raises(ValueError, match="text-only reward model"):
        scorer.score([make_sample("preference", 0)], ["red"])  # the colour question has an image


def test_text_modality_streams_only_text_only_pairs(tmp_path):
    _, processor = build_tiny(seed=0)
    shards = ensure_synthetic(tmp_path, n_per_type=16, types=("preference",))
    stream = PairStream({"p": {"urls": shards["preference"], "weight": 1.0}}, processor, seq_len=512,
                        pack_buffer=8, modality="text", seed=0, shuffle_buffer=1)
    pairs = [pair for _, pair in itertools.islice(stream.items(iter(stream.samples)), 16)]
    assert all(p.chosen.pixel_values is None and p.rejected.pixel_values is None for p in pairs)
    assert {processor.tokenizer.decode(p.chosen.input_ids[-1]) for p in pairs} == {"<|im_end|>"}


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, 3.0]), torch.tensor([1.0, 1.0, 3.0])
    # -log sigmoid(1) = log(1 + e^-1) = 0.313262, -log sigmoid(-1) = log(1 + e) = 1.313262, -log sigmoid(0) = log 2
    assert pair_losses(chosen, rejected).tolist() == pytest.approx([0.313262, 1.313262, 0.693147], abs=1e-6)
    assert pair_losses(chosen, rejected).mean().item() == pytest.approx(0.773224, abs=1e-6)


@pytest.fixture(scope="module")
def heldout_shards(tmp_path_factory) -> str:
    """8 held-out preference samples (colour, sum, count, manners, twice: half text-only) in one shard."""
    root = tmp_path_factory.mktemp("heldout")
    return ensure_synthetic(root, n_per_type=8, split="heldout", types=("preference",))["preference"][0]


def _heldout_data(processor, heldout, modality: str = "vision", heldout_pairs: int = 256) -> PreferenceDataModule:
    return PreferenceDataModule({}, {}, processor, seq_len=512, batch_size=2, modality=modality, heldout=heldout,
                                heldout_pairs=heldout_pairs)


def test_heldout_batches_hold_the_first_pairs_of_the_modality(heldout_shards):
    processor = build_tiny(seed=0)[1]
    batches = _heldout_data(processor, heldout_shards, heldout_pairs=5).heldout_batches()
    assert sum(int(b["pairs"]) for b in batches) == 5
    text = _heldout_data(processor, heldout_shards, modality="text").heldout_batches()
    assert sum(int(b["pairs"]) for b in text) == 4 and all(b.get("pixel_values") is None for b in text)


def test_a_missing_heldout_source_scores_nothing(heldout_shards, tmp_path, caplog):
    processor = build_tiny(seed=0)[1]
    assert _heldout_data(processor, None).heldout_batches() == []
    assert _heldout_data(processor, heldout_shards, heldout_pairs=0).heldout_batches() == []
    with caplog.at_level(logging.WARNING, logger="mimovl.data.preference"):
        assert _heldout_data(processor, str(tmp_path / "none/*.tar")).heldout_batches() == []
    assert "stage.heldout" in caplog.text and "matches no shard" in caplog.text


class SequenceLength(torch.nn.Module):
    """A stand-in reward model: each sequence's reward is its token count. Counts its forwards."""

    def __init__(self):
        super().__init__()
        self.forwards = 0

    def forward(self, batch: dict) -> torch.Tensor:
        self.forwards += 1
        segments = batch["segment_ids"]
        return torch.cat([torch.bincount(row)[1:].float() for row in segments])  # row-major, segments 1, 2, ...


def test_heldout_accuracy_by_hand(heldout_shards):
    """With reward = length, a pair counts as ranked right exactly when its chosen answer is the longer one; each
    rank scores its share and every rank runs the same number of forwards (FSDP2 needs that)."""
    processor = build_tiny(seed=0)[1]
    samples = list(mixed_stream({"h": {"urls": heldout_shards}}, seed=0, shuffle_buffer=0, resample=False))
    pairs = [encode_pair(s, processor) for s in samples]
    longer = sum(len(p.chosen) > len(p.rejected) for p in pairs)
    assert 0 < longer < len(pairs)  # e.g. polite answers are longer, a wrong colour may be too
    batches = _heldout_data(processor, heldout_shards).heldout_batches()
    net = SequenceLength()
    assert heldout_counts(net, batches, 0, 1, "cpu") == (longer, 8)
    nets = [SequenceLength() for _ in range(3)]
    shares = [heldout_counts(nets[rank], batches, rank, 3, "cpu") for rank in range(3)]
    assert tuple(map(sum, zip(*shares))) == (longer, 8)
    assert len({n.forwards for n in nets}) == 1 and nets[0].forwards == -(-len(batches) // 3)


def test_rm_summary_reports_the_heldout_accuracy(heldout_shards):
    """A head of zeros gives every answer reward 0: no pair is ranked right (a tie is not), accuracy exactly 0."""
    model, processor = build_tiny(seed=0)
    module = RewardModule(model, trainable=["llm"], lr={"llm": 1e-3}, head_lr=1e-3)
    torch.nn.init.zeros_(module.net.head.weight)
    for heldout, expected in [(heldout_shards, {"heldout_accuracy": 0.0, "heldout_pairs": 8}),
                              (None, {"heldout_accuracy": None, "heldout_pairs": 0})]:
        module.trainer = SimpleNamespace(datamodule=_heldout_data(processor, heldout), world_size=1, global_rank=0)
        module.on_train_end()
        assert module.net.training  # back in training mode
        assert {k: module.summary()[k] for k in expected} == expected
    assert "held-out pair accuracy None (0 pairs)" in module.headline()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A RewardModule on the tiny model, its rewards on packed pairs (two pairs per row), and its export."""
    model, processor = build_tiny(seed=0)
    module = RewardModule(model, trainable=["llm"], lr={"llm": 1e-3}, head_lr=1e-3)
    samples = [make_sample("preference", i, split="heldout") for i in range(8)]
    pairs = [encode_pair(s, processor) for s in samples]
    rows = [Row(samples=pairs[i : i + 2]) for i in range(0, len(pairs), 2)]
    batch = collate_pairs(rows, max(r.length for r in rows), processor.tokenizer.pad_token_id)
    module.net.eval()
    with torch.no_grad():
        rewards = module.net(batch).view(-1, 2)  # row-major: pair i of `samples` is row i
    out = tmp_path_factory.mktemp("rm_export") / "hf"
    module.export(out, processor, full_state_dict(module.model))  # as train.py does
    return out, samples, rewards


def test_scorer_from_the_export_equals_the_training_model(exported):
    directory, samples, rewards = exported
    scorer = RewardModelScorer(directory, batch_size=3)
    chosen = scorer.score(samples, [s["meta"]["chosen"] for s in samples])
    rejected = scorer.score(samples, [s["meta"]["rejected"] for s in samples])
    assert all(isinstance(x, float) and 0.0 <= x <= 1.0 for x in chosen + rejected)
    assert chosen == pytest.approx(torch.sigmoid(rewards[:, 0]).tolist(), abs=1e-5)
    assert rejected == pytest.approx(torch.sigmoid(rewards[:, 1]).tolist(), abs=1e-5)
    assert len(set(chosen + rejected)) == len(chosen + rejected)  # a real function of the input, not a constant


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 0.05)])
def test_service_answers_like_the_scorer(exported, tmp_path, dtype, tolerance):
    """The service started with its one command scores as the in-process float32 scorer does (bfloat16: to
    bfloat16's precision, the --dtype a 7B reward model is served in)."""
    directory, samples, _ = exported
    prompts = samples[:4] + [_prompt("video", 0), _prompt("grounding", 1)]
    responses = [s["meta"]["chosen"] for s in samples[:4]] + ["[00:01,00:03]", "[10, 10, 40, 40]"]
    log = open(tmp_path / "service.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mimovl.serve", "--model", str(directory), "--port", "0",
         "--dtype", dtype],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the service accepts requests
        assert line, (tmp_path / "service.log").read_text()
        url = re.search(r"http://\S+", line).group(0)
        client = HTTPRewardScorer(url, timeout=60)
        assert client.health() == {"status": "ok", "model": str(directory), "modality": "vision",
                                   "max_body_bytes": 16 * 2**20, "max_response_chars": 8192}
        remote = client.score(prompts, responses)
        local = RewardModelScorer(directory).score(prompts, responses)
        assert remote == pytest.approx(local, abs=tolerance)
        with pytest.raises(RewardServiceError, match="HTTP 400"):  # a bad request is refused, not retried
            HTTPRewardScorer(url).score([{"messages": []}], ["no prompt"])
        with pytest.raises(RewardServiceError, match="6 samples but 5 responses"):  # caught before sending
            HTTPRewardScorer(url).score(prompts, responses[:-1])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_an_unreachable_service_retries_then_raises_naming_the_url(monkeypatch):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    calls, sleeps = [], []
    urlopen = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: calls.append(1) or urlopen(*a, **k))
    monkeypatch.setattr(client.time, "sleep", sleeps.append)
    scorer = HTTPRewardScorer(url, timeout=5, retries=2, backoff=0.25)
    with pytest.raises(RewardServiceError, match=re.escape(url)) as error:
        scorer.score([_prompt("qa", 0)], ["3"])
    assert len(calls) == 3 and sleeps == [0.25, 0.5]
    assert "3 attempts" in str(error.value) and "python -m mimovl.serve" in str(error.value)
