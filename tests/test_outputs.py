"""Outputs that survive kills (mimovl.outputs): checkpoints, exports and summaries are written atomically, an
unreadable last.ckpt is a UsageError, one run at a time holds an output directory, and a resumed run says so."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mimovl.errors import UsageError
from mimovl.model import build_tiny, export_hf, load_hf
from mimovl.fit.checkpoint import AtomicCheckpointIO
from mimovl.outputs import resume_point, run_lock, write_json
from stagerun import compose_run, run_stage

SRC = Path(__file__).resolve().parents[1] / "src"

# Saves a ~400 MB checkpoint (step 2) to argv[1] with argv[2]'s plugin: "atomic" (ours) or "lightning" (its own).
SAVE = """
import sys, torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from mimovl.fit.checkpoint import AtomicCheckpointIO
plugin = AtomicCheckpointIO() if sys.argv[2] == "atomic" else TorchCheckpointIO()
checkpoint = {"global_step": 2, "weights": torch.ones(100_000_000)}
print("saving", flush=True)
plugin.save_checkpoint(checkpoint, sys.argv[1])
print("saved", flush=True)
"""


def _temps(directory: Path) -> list[Path]:
    return sorted(directory.glob(".*.tmp"))


def _kill_mid_save(path: Path, delay: float, tmpdir: Path) -> None:
    """Starts the save in a child with TMPDIR=tmpdir, kills it (SIGKILL) `delay` s after the temp file appears."""
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(SRC)}
    child = subprocess.Popen([sys.executable, "-c", SAVE, str(path), "atomic"], env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "saving"
        deadline = time.monotonic() + 60
        while not any(t.stat().st_size > 0 for t in _temps(path.parent) if t.exists()):
            assert time.monotonic() < deadline and child.poll() is None, "the save never started writing"
            time.sleep(0.005)
        time.sleep(delay)
        assert child.poll() is None, "the save finished before the kill: the test proves nothing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_a_save_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the checkpoint's")
    tmpdir = shm / f"mimovl-test-{os.getpid()}"
    tmpdir.mkdir(exist_ok=True)
    try:
        last = tmp_path / "checkpoints" / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"global_step": 1, "weights": torch.arange(10.0)}, last)
        for delay in (0.0, 0.05, 0.3):
            _kill_mid_save(last, delay, tmpdir)
            assert torch.load(last)["global_step"] == 1, delay
            assert torch.equal(torch.load(last)["weights"], torch.arange(10.0))
            assert resume_point(last).step == 1
            assert list(tmpdir.iterdir()) == []  # nothing went through $TMPDIR
        assert _temps(last.parent)  # the killed writer's temp file...
        AtomicCheckpointIO().save_checkpoint({"global_step": 3}, last)
        assert _temps(last.parent) == []  # ...is removed by the next save
        assert resume_point(last).step == 3
    finally:
        shutil.rmtree(tmpdir)


@pytest.mark.parametrize("size", ["empty", "truncated"])
def test_an_unreadable_last_checkpoint_is_a_usage_error_naming_it(tmp_path, size):
    good = tmp_path / "good.ckpt"
    torch.save({"global_step": 4, "weights": torch.zeros(50_000)}, good)
    data = good.read_bytes()
    last = Path(compose_run(tmp_path).paths.output_dir) / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"" if size == "empty" else data[: len(data) // 2])
    with pytest.raises(UsageError, match=r"last\.ckpt is not a readable checkpoint .*Delete it .*resume=false"):
        run_stage(tmp_path, "stage.max_steps=2", "data.num_workers=0")


def test_a_distributed_checkpoint_without_its_metadata_is_a_usage_error(tmp_path):
    last = tmp_path / "last.ckpt"  # save_distributed_checkpoint=true writes a directory; .metadata comes last
    last.mkdir()
    torch.save({"global_step": 4}, last / "meta.pt")
    with pytest.raises(UsageError, match=r"no .*\.metadata.*resume=false"):
        resume_point(last)
    (last / ".metadata").write_bytes(b"")
    assert resume_point(last).step == 4


def test_a_busy_output_directory_refuses_a_second_run_and_a_killed_holder_blocks_nothing(tmp_path):
    output_dir = Path(compose_run(tmp_path).paths.output_dir)
    output_dir.mkdir(parents=True)
    hold = "import sys, time; from mimovl.outputs import run_lock\nwith run_lock(sys.argv[1]):\n" \
           "    print('locked', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(output_dir)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(SRC)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(UsageError, match=rf"in use by another run \(pid {holder.pid} on .*run\.lock"):
            run_stage(tmp_path, "stage.max_steps=2", "data.num_workers=0")
        assert time.monotonic() - started < 5  # at once: before the model or the data
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert f"pid {holder.pid}" in (output_dir / "run.lock").read_text()  # the dead holder's file is still there
    with run_lock(output_dir):
        assert f"pid {os.getpid()}" in (output_dir / "run.lock").read_text()


@pytest.mark.slow
def test_a_resumed_run_says_where_it_resumes(tmp_path, capsys):
    common = ["data.num_workers=0", "callbacks.checkpoint.every_n_train_steps=1"]
    first = run_stage(tmp_path, "stage.max_steps=2", *common)
    assert "s1: starting from model=build_tiny (random init)" in capsys.readouterr().out
    last = Path(first["output_dir"]) / "checkpoints" / "last.ckpt"
    assert resume_point(last).step == 2
    resumed = run_stage(tmp_path, "stage.max_steps=3", *common)
    out = capsys.readouterr().out
    assert f"s1: resuming from {last} (step 2)" in out and "s1: starting from" not in out
    assert resumed["steps"] == 3 and resume_point(last).step == 3
    assert _temps(last.parent) == [] and _temps(last.parent.parent) == []


def test_an_export_that_fails_midway_leaves_the_previous_export_whole(tmp_path, monkeypatch):
    model, processor = build_tiny(seed=0)
    hf = export_hf(model, processor, tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in hf.iterdir()}
    changed = {k: v + 1.0 if k == "lm_head.weight" else v for k, v in model.state_dict().items()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    # The weights and the tokenizer are written by then: only the last file is missing.
    monkeypatch.setattr(type(processor.video_processor), "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        export_hf(model, processor, hf, state_dict=changed)
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == before
    assert _temps(tmp_path) == []
    monkeypatch.undo()

    export_hf(model, processor, hf, state_dict=changed)
    assert torch.equal(load_hf(hf)[0].lm_head.weight, model.lm_head.weight + 1.0)
    assert sorted(p.name for p in hf.iterdir()) == sorted(before) and _temps(tmp_path) == []


def test_export_refuses_to_replace_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    model, processor = build_tiny(seed=0)
    with pytest.raises(FileExistsError, match="not a model directory"):
        export_hf(model, processor, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_write_json_replaces_the_file_whole_with_the_usual_permissions(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"steps": 1})
    write_json(path, {"steps": 2})
    assert path.read_text() == '{\n  "steps": 2\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert _temps(tmp_path) == []
