"""Resuming reads nothing twice: the stream's saved position (per rank and DataLoader worker) gives the resumed run
the uninterrupted run's batches, and what it decodes before its first step does not grow with the steps done.
Checkpoints without a position, and changed data settings, fall back to skipping (with a log line)."""

import itertools
import logging
import multiprocessing
import pickle
import shutil

import lightning.pytorch as pl
import pytest
import torch
from stagerun import run_stage
from test_data_stream import corrupt_shard
from test_train import in_memory

import mimovl.data.sources as sources
from mimovl.data.stream import mixed_stream
from mimovl.data.synthetic import write_synthetic
from mimovl.rl.data import PromptDataModule

STEPS = 8
SHARD = 48  # samples per synthetic shard here (data.generate.n_per_type=48: one shard per source)
# Samples decoded (in this process and its forked DataLoader workers), and their count when the first step began.
DECODED = multiprocessing.Value("l", 0)
FIRST_STEP = {}


@pytest.fixture
def counted(monkeypatch):
    """Counts every decoded sample (the reader's one decode function, also in workers: they fork from here)."""
    decode = sources.decode_sample

    def counting(*args, **kwargs):
        with DECODED.get_lock():
            DECODED.value += 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(sources, "decode_sample", counting)

    def run(tmp, *overrides) -> tuple[dict, int]:
        DECODED.value = 0
        FIRST_STEP.clear()
        summary = run_stage(tmp, *overrides, "+callbacks.first._target_=test_data_resume.NoteFirstStep")
        return summary, FIRST_STEP["decoded"]

    return run


class NoteFirstStep(pl.Callback):
    """Notes the samples decoded so far when the run's first step begins."""

    def on_train_batch_start(self, *args) -> None:
        FIRST_STEP.setdefault("decoded", DECODED.value)


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory) -> dict:
    """Uninterrupted runs by worker count (and what they decoded before their first step), made once."""
    return {"root": tmp_path_factory.mktemp("straight")}


def common(workers: int) -> list[str]:
    return ["stage=s3", f"stage.max_steps={STEPS}", f"data.num_workers={workers}",
            "callbacks.checkpoint.every_n_train_steps=1"]


def straight(runs: dict, counted, workers: int) -> tuple[dict, int]:
    if workers not in runs:
        runs[workers] = counted(runs["root"] / f"workers{workers}", *common(workers))
    return runs[workers]


def stop_at(step: int) -> list[str]:
    return ["+callbacks.stop._target_=test_train.StopAtStep", f"+callbacks.stop.step={step}"]


def same_run(resumed: dict, straight: dict) -> None:
    assert resumed["steps"] == straight["steps"] == STEPS
    assert resumed["loss_history"] == pytest.approx(straight["loss_history"], abs=1e-6)
    a, b = in_memory(straight["hf_dir"]), in_memory(resumed["hf_dir"])
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_run_is_the_uninterrupted_one_and_decodes_no_more_for_more_steps(straight_runs, tmp_path, counted,
                                                                                      caplog, workers):
    caplog.set_level(logging.INFO, logger="mimovl")
    whole, fresh = straight(straight_runs, counted, workers)
    decoded = {}
    for step in (2, 6):
        stopped = run_stage(tmp_path / f"at{step}", *common(workers), *stop_at(step))
        assert stopped["steps"] == step
        caplog.clear()
        resumed, decoded[step] = counted(tmp_path / f"at{step}", *common(workers))
        assert "resuming the data stream at its saved position" in caplog.text
        same_run(resumed, whole)
    print(f"num_workers={workers}: decoded before the first step: fresh {fresh}, resumed after 2 steps "
          f"{decoded[2]}, after 6 steps {decoded[6]}")
    # Restoring decodes what the packer held (data.pack_buffer=64) and one sample of lookahead, per worker; the
    # rest is what any first step decodes (check_rows_fit's probes, the first batches). So a resumed run decodes
    # at most a shard's worth per worker more than a fresh one, as many after 6 steps as after 2.
    for step in (2, 6):
        assert decoded[step] <= fresh + SHARD * max(workers, 1)
    assert abs(decoded[6] - decoded[2]) <= SHARD * max(workers, 1) // 2  # workers read ahead as they are timed


@pytest.mark.slow
def test_an_old_checkpoint_resumes_by_skipping_and_changed_settings_fall_back_to_it(straight_runs, tmp_path, counted,
                                                                                     caplog):
    caplog.set_level(logging.INFO, logger="mimovl")
    whole, fresh = straight(straight_runs, counted, 0)
    old, other = (f"paths.run_root={tmp_path / 'runs' / name}" for name in ("old", "other"))
    stopped = run_stage(tmp_path, *common(0), old, *stop_at(6))
    last = stopped["output_dir"] + "/checkpoints/last.ckpt"
    shutil.copytree(tmp_path / "runs" / "old", tmp_path / "runs" / "other")  # the same shards, read from one place
    checkpoint = torch.load(last, weights_only=False)
    saved = checkpoint["ShardDataModule"].pop("stream")  # as a checkpoint written before positions were saved
    assert len(saved["ranks"]) == 1 and saved["ranks"][0] is not None
    torch.save(checkpoint, last)

    caplog.clear()
    resumed, skipping = counted(tmp_path, *common(0), old)
    assert "holds no data stream position" in caplog.text and "skipping the 6 batches" in caplog.text
    same_run(resumed, whole)
    print(f"an old checkpoint after 6 steps: decoded {skipping} before the first step (fresh {fresh})")
    assert skipping >= fresh + 6 * 2  # the 6 skipped batches of 2 rows are decoded again, a sample a row at least

    caplog.clear()
    changed, _ = counted(tmp_path, *common(0), other, "data.shuffle_buffer=100")
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "data settings differ" in r.getMessage()]
    assert len(warned) == 1 and "(shuffle_buffer)" in warned[0].getMessage() and "skipping the 6" in caplog.text
    assert changed["steps"] == STEPS


def taken(samples, n: int) -> list:
    """The next n samples' (key, origin, losses reported before them)."""
    return [(s["key"], s["origin"], s["skipped_before"], s["dropped_before"]) for s in itertools.islice(samples, n)]


@pytest.mark.parametrize("resample", [True, False])
def test_the_mixed_stream_goes_on_from_its_saved_position_decoding_only_its_lookahead(tmp_path, counted,
                                                                                      resample):
    shards = {**write_synthetic(tmp_path, n_per_type=32, shard_size=8, types=("caption",)),
              **write_synthetic(tmp_path, n_per_type=16, shard_size=8, types=("text",))}
    corrupt_shard(tmp_path / "bad-0.tar", 500)  # skips, a cut member and a shard error, reported in order
    mix = {"c": {"urls": shards["caption"] + [str(tmp_path / "bad-0.tar")], "weight": 3.0},
           "t": {"urls": shards["text"], "weight": 1.0}}
    whole = taken(mixed_stream(mix, seed=0, shuffle_buffer=16, resample=resample), 60)
    for n in (0, 1, 9, 30, len(whole)):
        stream = mixed_stream(mix, seed=0, shuffle_buffer=16, resample=resample)
        head = taken(iter(stream), n)
        state = pickle.loads(pickle.dumps(stream.state_dict()))  # as a worker sends it
        again = mixed_stream(mix, seed=0, shuffle_buffer=16, resample=resample)
        again.load_state_dict(state)
        DECODED.value = 0
        samples = iter(again)  # re-reads the shuffle buffers' samples as bytes, decodes the one of lookahead
        assert DECODED.value == (state["ahead"] is not None)
        assert head + taken(samples, 60 - n) == whole
        assert sum(len(s["shuffle"]["held"]) for s in state["sources"].values()) <= 2 * 16


def test_the_prompt_stream_goes_on_from_its_saved_position(tmp_path, counted, caplog):
    caplog.set_level(logging.INFO, logger="mimovl")
    shards = write_synthetic(tmp_path, n_per_type=24, shard_size=8, types=("qa", "reasoning"))

    def prompts(state: dict | None = None) -> PromptDataModule:
        data = PromptDataModule(shards, {"qa": 1.0, "reasoning": 2.0}, {}, shuffle_buffer=8)
        if state is not None:
            data.load_state_dict(pickle.loads(pickle.dumps(state)))
        return data

    whole = [p.key for p in prompts().draw(30)]
    first = prompts()
    head = [p.key for p in first.draw(11)]
    state = first.state_dict()
    DECODED.value = 0
    again = prompts(state)
    tail = [p.key for p in again.draw(19)]
    assert head + tail == whole and "resuming the prompt stream at its saved position" in caplog.text
    assert DECODED.value == 19 + 1  # what it draws, and the one sample of lookahead again
    caplog.clear()
    old = prompts({"consumed": state["consumed"]})  # a checkpoint from before positions were saved
    assert [p.key for p in old.draw(19)] == tail and "skipping the 11 prompts" in caplog.text
