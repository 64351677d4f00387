"""The stream reader: corrupt data and broken shards (counted by reason), frame subsampling, weighted mixing,
determinism, rank/worker splits."""

import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest
import torch
import webdataset as wds

from mimovl.data.shards import _encode_media, _record, write_shards
from mimovl.data.stream import SKIP_REASONS, CorruptSample, decode_sample, mixed_stream, sample_frames
from mimovl.data.synthetic import make_sample, write_synthetic
from mimovl.errors import UsageError


def take(stream, n=None):
    """The first n samples (all if n is None)."""
    return list(islice(stream, n))


def keys(stream, n=None):
    return [s["key"] for s in take(stream, n)]


def loader(ds, num_workers):
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """caption: 4 shards of 8 (train_caption_*), text: 2 shards of 8."""
    root = tmp_path_factory.mktemp("synth")
    return {
        **write_synthetic(root, n_per_type=32, shard_size=8, types=("caption",)),
        **write_synthetic(root, n_per_type=16, shard_size=8, types=("text",)),
    }


def record(i, **changes):
    s = make_sample("caption", i)
    r = _record(s["key"], s["type"], s["messages"], s["meta"], _encode_media(s, "png"))
    r.update(changes)
    return r


def dropped(samples) -> Counter:
    """Everything the samples report as lost before them, by name."""
    return sum((Counter(s["dropped_before"]) for s in samples), Counter())


def corrupt_shard(path: Path, first: int) -> set[str]:
    """Good samples around a bad image, broken JSON, a missing json member and a truncated final member.
    Returns the good keys; the shard holds 4 bad samples."""
    good = [first, first + 2, first + 4, first + 6]
    with wds.TarWriter(str(path)) as w:
        w.write(record(first))
        w.write(record(first + 1, **{"img0.png": b"\x89PNG\r\n\x1a\nnot an image"}))
        w.write(record(first + 2))
        w.write(record(first + 3, json=b'{"type": "caption", "messages": ['))
        w.write(record(first + 4))
        missing = record(first + 5)
        del missing["json"]
        w.write(missing)
        w.write(record(first + 6))
        w.write(record(first + 7))
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]  # the last sample's json
    os.truncate(path, last.offset_data + last.size // 2)
    return {f"train_caption_{i:07d}" for i in good}


def test_corrupt_samples_are_skipped_and_counted(tmp_path, caplog):
    good = corrupt_shard(tmp_path / "bad-0.tar", 0)
    ds = mixed_stream(
        {"c": {"urls": str(tmp_path / "bad-0.tar"), "weight": 1}}, seed=0, shuffle_buffer=0, resample=False
    )
    got = list(ds)
    assert {s["key"] for s in got} == good and len(got) == 4
    assert sum(s["skipped_before"] for s in got) == 4
    # bad samples sit before good ones 2, 3, 4; the truncated last one is added to the last yield
    assert [s["skipped_before"] for s in got] == [0, 1, 1, 2]
    # by reason; the cut also makes the shard read a shard error (one, logged with the shard's path)
    assert [s["dropped_before"] for s in got] == [
        {}, {"bad_image": 1}, {"bad_json": 1}, {"missing_member": 1, "truncated_member": 1, "shard_errors": 1}]
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped sample")]
    assert len(skipped) == 4 and all("bad-0.tar" in m for m in skipped)
    assert any("(bad_json)" in m and "train_caption_0000003" in m and "JSONDecodeError" in m for m in skipped)
    shard_errors = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shard read error")]
    assert len(shard_errors) == 1 and "bad-0.tar" in shard_errors[0] and "cut inside member" in shard_errors[0]


def test_skip_counts_flow_through_dataloader_workers(tmp_path):
    good = corrupt_shard(tmp_path / "bad-0.tar", 0) | corrupt_shard(tmp_path / "bad-1.tar", 100)
    ds = mixed_stream(
        {"c": {"urls": str(tmp_path / "bad-{0..1}.tar"), "weight": 1}},
        seed=0,
        shuffle_buffer=4,
        resample=False,
    )
    got = list(loader(ds, num_workers=2))
    assert {s["key"] for s in got} == good and len(got) == 8
    assert sum(s["skipped_before"] for s in got) == 8
    assert dropped(got) == Counter(bad_image=2, bad_json=2, missing_member=2, truncated_member=2, shard_errors=2)


def test_decode_sample_names_key_and_reason():
    with pytest.raises(CorruptSample, match=r"key k7: MissingMember: missing member KEY.img0.png") as caught:
        raw = {"__key__": "k7", "__url__": "x.tar", "json": record(0)["json"]}
        decode_sample(raw, "src")
    assert caught.value.reason == "missing_member"
    raw = {"__key__": "k7", "__url__": "x.tar", **{k: v for k, v in record(0).items() if k != "__key__"}}
    header = json.loads(raw["json"])
    header["type"] = "poem"
    with pytest.raises(CorruptSample, match="shard x.tar key k7: ValueError: .*unknown type 'poem'") as caught:
        decode_sample({**raw, "json": json.dumps(header).encode()}, "src")
    assert caught.value.reason == "bad_schema"


def without(field):
    header = json.loads(record(0)["json"])
    del header[field]
    return json.dumps(header).encode()


def reshaped(change):
    header = json.loads(record(0)["json"])
    change(header)
    return json.dumps(header).encode()


# One planted sample per skip reason (truncated_member needs a cut shard: see corrupt_shard and cut_shards).
PLANTED = {
    "missing_member": lambda r: {k: v for k, v in r.items() if k != "img0.png"},
    "bad_json": lambda r: {**r, "json": b'{"type": "caption", "messages": ['},
    "missing_field": lambda r: {**r, "json": without("media")},
    "bad_image": lambda r: {**r, "img0.png": r["img0.png"][: len(r["img0.png"]) // 2]},  # truncated PNG
    "bad_schema": lambda r: {**r, "json": reshaped(lambda h: h["messages"].append(h["messages"][0]))},
}


@pytest.mark.parametrize("reason", sorted(PLANTED))
def test_each_planted_problem_is_skipped_with_its_reason(reason):
    raw = {"__url__": "x.tar", **PLANTED[reason](record(0))}
    with pytest.raises(CorruptSample) as caught:
        decode_sample(raw, "src")
    assert caught.value.reason == reason and reason in SKIP_REASONS


def cut_shards(root: Path) -> dict[str, Path]:
    """A good shard of 5 and one broken shard per way a shard read fails; "header" is the good shard cut 100
    bytes into the header of its 4th sample's first member, "boundary" cut right before it."""
    good = root / "good.tar"
    with wds.TarWriter(str(good)) as w:
        for i in range(5):
            w.write(record(i))
    with tarfile.open(good) as tar:
        fourth = next(m for m in tar.getmembers() if m.name.startswith("train_caption_0000003."))
    shards = {"good": good, "zero": root / "zero.tar", "not_a_tar": root / "not_a_tar.tar",
              "header": root / "header.tar", "boundary": root / "boundary.tar"}
    shards["zero"].write_bytes(b"")
    shards["not_a_tar"].write_bytes(b"<html>404 Not Found</html>\n" * 100)
    for name, size in (("header", fourth.offset + 100), ("boundary", fourth.offset)):
        shards[name].write_bytes(good.read_bytes()[:size])
    return shards


@pytest.mark.parametrize("broken, arriving", [("zero", 0), ("not_a_tar", 0), ("header", 3), ("boundary", 3)])
def test_each_broken_shard_read_is_one_shard_error(tmp_path, caplog, broken, arriving):
    shards = cut_shards(tmp_path)
    urls = [str(shards["good"]), str(shards[broken])]
    got = list(mixed_stream({"c": {"urls": urls, "weight": 1}}, seed=0, shuffle_buffer=0, resample=False))
    # the good shard's 5 samples, and the 3 before the cut of a cut one
    assert sorted(s["key"] for s in got) == sorted(
        [f"train_caption_{i:07d}" for i in range(5)] + [f"train_caption_{i:07d}" for i in range(arriving)])
    assert dropped(got) == Counter(shard_errors=1)
    errors = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shard read error")]
    assert len(errors) == 1 and str(shards[broken]) in errors[0]


def test_an_intact_shard_reports_nothing_lost(tmp_path, caplog):
    got = list(mixed_stream({"c": {"urls": str(cut_shards(tmp_path)["good"])}}, seed=0, shuffle_buffer=0,
                            resample=False))
    assert len(got) == 5 and dropped(got) == Counter() and not caplog.records


def test_sample_frames_exact_values():
    four_fps = [k / 4 for k in range(16)]  # 0, 0.25, ..., 3.75
    assert sample_frames(four_fps, 2.0, None) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_frames(four_fps, 2.0, 4) == [0, 5, 10, 15]  # 4 ticks over 0..3.75: 0, 1.25, 2.5, 3.75
    assert sample_frames(four_fps, 1.0, None) == [0, 4, 8, 12]
    assert sample_frames(four_fps, None, None) == list(range(16))
    assert sample_frames([0, 1, 2, 3, 4], 2.0, None) == [0, 1, 2, 3, 4]  # slower than the target: all kept
    thirty = [k / 30 for k in range(300)]  # 10 s at 30 fps
    assert sample_frames(thirty, 2.0, 256) == list(range(0, 300, 15))
    long = [k / 2 for k in range(600)]  # 300 s at 2 fps: 600 ticks, capped
    picked = sample_frames(long, 2.0, 256)
    assert len(picked) == 256 and picked[0] == 0 and picked[-1] == 599
    assert sample_frames([], 2.0, 256) == []


def test_video_is_subsampled_at_read_time(tmp_path):
    sample = next(
        s for s in (make_sample("video", i) for i in range(50)) if len(s["videos"][0]["frames"]) == 16
    )
    paths = write_shards([sample], str(tmp_path / "v-%02d.tar"), progress=False)
    def read_video(max_frames):
        stream = mixed_stream({"v": {"urls": paths, "weight": 1}}, seed=0, shuffle_buffer=0, resample=False,
                              video_fps=1.0, max_frames=max_frames)
        (got,) = list(stream)
        return got["videos"][0]

    video = read_video(max_frames=5)
    # 1 fps over 0..7.5 s gives 8 ticks, over the cap: 5 ticks 0, 1.875, 3.75, 5.625, 7.5 instead,
    # each taking the nearest frame (a tie takes the earlier one)
    assert video["timestamps"] == [0.0, 2.0, 3.5, 5.5, 7.5]
    assert len(video["frames"]) == 5 and video["fps"] == pytest.approx(4 / 7.5)
    video = read_video(max_frames=256)
    assert video["timestamps"] == [float(t) for t in range(8)] and video["fps"] == 1.0


def test_weights_set_the_share(synth):
    sources = {
        "caption": {"urls": synth["caption"], "weight": 3.0},
        "text": {"urls": synth["text"], "weight": 1.0},
    }
    got = [s["source"] for s in take(mixed_stream(sources, seed=0, shuffle_buffer=16), 2000)]
    assert abs(Counter(got)["caption"] / 2000 - 0.75) < 0.03


def test_same_seed_same_sequence_other_seed_differs(synth):
    sources = {
        "caption": {"urls": synth["caption"], "weight": 3.0},
        "text": {"urls": synth["text"], "weight": 1.0},
    }
    a = keys(mixed_stream(sources, seed=0, shuffle_buffer=16), 300)
    assert a == keys(mixed_stream(sources, seed=0, shuffle_buffer=16), 300)
    assert a != keys(mixed_stream(sources, seed=1, shuffle_buffer=16), 300)
    assert len(set(a)) == 48  # resampling covers everything
    one_pass = keys(mixed_stream(sources, seed=0, shuffle_buffer=16, resample=False))
    assert sorted(one_pass) == sorted(set(one_pass)) and len(one_pass) == 48
    assert one_pass == keys(mixed_stream(sources, seed=0, shuffle_buffer=16, resample=False))


@pytest.mark.slow
def test_same_sequence_in_fresh_processes_with_workers_and_ranks(synth):
    """Seeds must not depend on Python's per-process hash salt: a fresh interpreter gives the same keys."""
    sources = {"c": {"urls": synth["caption"], "weight": 3.0}, "t": {"urls": synth["text"], "weight": 1.0}}
    script = (
        "import sys, json, torch; from mimovl.data.stream import mixed_stream\n"
        f"ds = mixed_stream({sources!r}, seed=7, shuffle_buffer=8, rank=1, world_size=2)\n"
        "it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2))\n"
        "print(json.dumps([next(it)['key'] for _ in range(60)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "1"}  # this process has a random salt
    fresh = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    ds = mixed_stream(sources, seed=7, shuffle_buffer=8, rank=1, world_size=2)
    assert json.loads(fresh.stdout) == keys(loader(ds, num_workers=2), 60)


def test_ranks_read_disjoint_shards_in_one_pass(synth, monkeypatch):
    urls = synth["caption"]  # 4 shards of 8
    by_args = [
        keys(
            mixed_stream(
                {"c": {"urls": urls, "weight": 1}},
                seed=0,
                shuffle_buffer=4,
                resample=False,
                rank=r,
                world_size=2,
            )
        )
        for r in (0, 1)
    ]
    by_env = []
    for r in (0, 1):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", "2")
        by_env.append(
            keys(mixed_stream({"c": {"urls": urls, "weight": 1}}, seed=0, shuffle_buffer=4, resample=False))
        )
    assert by_env == by_args
    shards_of = [{int(k[-7:]) // 8 for k in ks} for ks in by_args]  # 8 samples per shard, in key order
    assert len(by_args[0]) == len(by_args[1]) == 16
    assert not set(by_args[0]) & set(by_args[1]) and not shards_of[0] & shards_of[1]
    assert len(set(by_args[0]) | set(by_args[1])) == 32


def test_workers_read_disjoint_shards_in_one_pass(synth):
    ds = mixed_stream(
        {"c": {"urls": synth["caption"], "weight": 1}},
        seed=0,
        shuffle_buffer=4,
        resample=False,
        rank=0,
        world_size=1,
    )
    got = keys(loader(ds, num_workers=2))
    assert len(got) == 32 and len(set(got)) == 32


def test_one_shard_feeds_every_rank_and_worker_when_resampling(synth):
    one = {"t": {"urls": synth["text"][:1], "weight": 1}}
    for rank in (0, 1):
        got = keys(mixed_stream(one, seed=0, shuffle_buffer=4, rank=rank, world_size=2), 40)
        assert len(got) == 40 and len(set(got)) == 8
    # no shuffle: both workers read the same single shard in the same order, so the loader alternates them
    got = keys(loader(mixed_stream(one, seed=0, shuffle_buffer=0, rank=0, world_size=1), num_workers=2), 40)
    assert got[0::2] == got[1::2] and len(set(got)) == 8
    # one pass cannot share a shard: rank 1 of 2 gets nothing (eval should give every rank a shard)
    assert keys(mixed_stream(one, seed=0, shuffle_buffer=0, resample=False, rank=1, world_size=2)) == []


def test_bad_source_specs_fail_fast(tmp_path):
    with pytest.raises(UsageError, match="data.sources.x=.*2 of its shards do not exist"):
        mixed_stream(
            {"x": {"urls": str(tmp_path / "nope-{0..1}.tar"), "weight": 1}}, seed=0, shuffle_buffer=0
        )
    with pytest.raises(UsageError, match="data.heldout.y=.*matches no shard"):
        mixed_stream({"y": {"urls": str(tmp_path / "*.tar")}}, seed=0, shuffle_buffer=0, config_key="data.heldout")
    with pytest.raises(ValueError, match="weights must be positive"):
        mixed_stream({"x": {"urls": [__file__], "weight": 0}}, seed=0, shuffle_buffer=0)


def test_a_source_of_empty_shards_fails_instead_of_spinning(tmp_path):
    empty = tmp_path / "empty-000000.tar"
    with wds.TarWriter(str(empty)):
        pass
    stream = mixed_stream({"caption": {"urls": [str(empty)], "weight": 1.0}}, seed=0, shuffle_buffer=1)
    with pytest.raises(RuntimeError, match="source 'caption': opened 20 shards in a row without one good sample"):
        next(iter(stream))
