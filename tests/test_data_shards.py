"""Schema checks, synthetic tasks, shard writing (Python, JSONL CLI), the round trip through the stream, and what
a stage run reports about bad shards (summary.json) and a row length no sample fits."""

import copy
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mimovl.data.schema import SAMPLE_TYPES, validate
from mimovl.data.shards import _encode_media, _record, main, write_jsonl_shards, write_shards
from mimovl.data.stream import SKIP_REASONS, mixed_stream
from mimovl.data.synthetic import COLORS, ensure_synthetic, make_sample, write_synthetic
from mimovl.errors import UsageError
from mimovl.stages.pretrain import PretrainModule
from stagerun import run_stage
from test_data_stream import PLANTED, record

N = 12  # samples per type in the round trip; qa and reasoning variants cycle by index, so all appear


def read_all(shards, **kw):
    """Every sample of `shards` once, in order (no shuffle, no frame subsampling unless asked)."""
    kw = {"video_fps": None, "max_frames": None, **kw}
    return list(
        mixed_stream(
            {"s": {"urls": list(shards), "weight": 1.0}}, seed=0, shuffle_buffer=0, resample=False, **kw
        )
    )


def answer(sample):
    return sample["messages"][-1]["content"][0]["text"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synth"), n_per_type=N, shard_size=5)


def test_round_trip_gives_back_every_sample(synth):
    assert set(synth) == set(SAMPLE_TYPES)
    for sample_type, shards in synth.items():
        assert len(shards) == 3  # 12 samples, 5 per shard
        got = sorted(read_all(shards), key=lambda s: s["key"])  # eval mode shuffles the shard order
        assert [s["key"] for s in got] == [f"train_{sample_type}_{i:07d}" for i in range(N)]
        for i, s in enumerate(got):
            want = make_sample(sample_type, i)
            validate(s)
            assert s["type"] == sample_type and s["source"] == "s" and s["skipped_before"] == 0
            assert s["dropped_before"] == {}
            assert s["messages"] == want["messages"]
            assert s["meta"] == json.loads(json.dumps(want["meta"]))
            assert len(s["images"]) == len(want["images"])
            for a, b in zip(s["images"], want["images"]):
                assert a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))  # PNG is lossless
            assert len(s["videos"]) == len(want["videos"])
            for a, b in zip(s["videos"], want["videos"]):
                assert a["timestamps"] == b["timestamps"] and a["fps"] == b["fps"]
                assert len(a["frames"]) == len(b["frames"])
                for fa, fb in zip(a["frames"], b["frames"]):  # JPEG: close, not equal
                    assert fa.size == fb.size
                    assert np.abs(np.asarray(fa, float) - np.asarray(fb, float)).mean() < 3


def test_boxes_and_answers_match_the_pixels(synth):
    for s in read_all(synth["grounding"]):
        box = s["meta"]["box"]
        assert json.loads(answer(s)) == box == s["meta"]["answer"]
        color, _ = s["meta"]["label"].split()
        cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        assert s["images"][0].getpixel((cx, cy)) == COLORS[color]
        assert s["images"][0].getpixel((box[2] + 1, box[3] + 1)) == (255, 255, 255)
    for s in read_all(synth["gui"]):
        x, y = json.loads(answer(s))["point"]
        x1, y1, x2, y2 = s["meta"]["answer"]
        assert x1 <= x <= x2 and y1 <= y <= y2 and [x, y] == s["meta"]["point"]
    for s in read_all(synth["video"]):
        start, end = s["meta"]["segment"]
        assert answer(s) == f"[00:{start:02d},00:{end:02d}]"
        x1, y1, x2, y2 = s["meta"]["box"]
        color, _ = s["meta"]["label"].split()
        v = s["videos"][0]
        for frame, t in zip(v["frames"], v["timestamps"]):
            pixel = np.asarray(frame.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)), float)
            visible = np.abs(pixel - COLORS[color]).max() < 40
            assert visible == (start <= t < end)


def test_counting_ocr_and_reasoning_answers_are_right(synth):
    qa = read_all(synth["qa"])
    counting = [s for s in qa if s["meta"].get("task") == "counting"]
    assert len(counting) == N // 3
    for s in counting:
        color, shape = s["messages"][0]["content"][1]["text"].split()[2:4]
        objects = s["meta"]["objects"]
        assert (
            int(answer(s))
            == s["meta"]["count"]
            == sum(o["color"] == color and o["shape"] + "s" == shape for o in objects)
        )
    for s in (s for s in qa if s["meta"].get("task") == "math"):
        assert int(answer(s)) == eval(s["meta"]["expression"])
    for s in read_all(synth["reasoning"]):
        thought, final = answer(s)[len("<think>") :].split("</think>")
        assert final == str(s["meta"]["answer"]) and thought
        if s["meta"]["task"] == "math":
            assert int(final) == eval(s["meta"]["expression"])
    for s in read_all(synth["ocr"]):
        assert answer(s) == " ".join(w["text"] for w in s["meta"]["words"])
        for w in s["meta"]["words"]:  # dark ink inside every word box
            assert np.asarray(s["images"][0].crop(w["box"])).min() < 100


def test_synthetic_is_deterministic_per_seed_and_split():
    def pixels(s):
        return [np.asarray(im).tobytes() for im in s["images"]]

    for t in SAMPLE_TYPES:
        a, b = make_sample(t, 3), make_sample(t, 3)
        assert a["messages"] == b["messages"] and a["meta"] == b["meta"] and pixels(a) == pixels(b)
    differs = [make_sample(t, 3)["messages"] != make_sample(t, 3, seed=1)["messages"] for t in SAMPLE_TYPES]
    assert sum(differs) >= 8
    held = [
        make_sample(t, 3)["messages"] != make_sample(t, 3, split="heldout")["messages"] for t in SAMPLE_TYPES
    ]
    assert sum(held) >= 8


def test_shards_are_byte_identical_and_ensure_is_idempotent(tmp_path):
    a = ensure_synthetic(tmp_path / "a", n_per_type=4, types=("caption", "video"))
    b = write_synthetic(tmp_path / "b", n_per_type=4, types=("caption", "video"))
    for t in a:
        assert [Path(p).read_bytes() for p in a[t]] == [Path(p).read_bytes() for p in b[t]]
    marker = tmp_path / "a" / "train" / "DONE.json"
    stamp = marker.stat().st_mtime_ns
    assert ensure_synthetic(tmp_path / "a", n_per_type=4, types=("caption", "video")) == a
    assert marker.stat().st_mtime_ns == stamp  # nothing rewritten
    # other arguments: rewritten
    c = ensure_synthetic(tmp_path / "a", n_per_type=6, types=("caption", "video"))
    assert len(read_all(c["caption"])) == 6


def test_write_shards_splits_by_maxcount_and_rejects_bad_samples(tmp_path):
    samples = [make_sample("text", i) for i in range(7)]
    paths = write_shards(samples, str(tmp_path / "t-%03d.tar"), maxcount=3, progress=False)
    assert [Path(p).name for p in paths] == ["t-000.tar", "t-001.tar", "t-002.tar"]
    assert [len(read_all([p])) for p in paths] == [3, 3, 1]
    with pytest.raises(ValueError, match="duplicate key"):
        write_shards([samples[0], samples[0]], str(tmp_path / "d-%03d.tar"), progress=False)
    bad = make_sample("caption", 0)
    bad["images"] = []
    with pytest.raises(ValueError, match="1 image parts but 0 images"):
        write_shards([bad], str(tmp_path / "b-%03d.tar"), progress=False)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("meta"), "missing field 'meta'"),
        (lambda s: s.update(type="poem"), "unknown type 'poem'"),
        (lambda s: s.update(key="a.b"), "bad key"),
        (lambda s: s["images"].append(s["images"][0]), "1 image parts but 2 images"),
        (lambda s: s["messages"].reverse(), "chat roles"),
        (lambda s: s["messages"].append(copy.deepcopy(s["messages"][-1])), "chat roles"),
        (lambda s: s["messages"][1]["content"].append({"type": "image"}), "only user messages"),
        (lambda s: s.update(images=[s["images"][0].convert("L")]), "RGB"),
    ],
)
def test_validate_names_the_problem(change, message):
    sample = make_sample("grounding", 0)
    validate(sample)
    change(sample)
    with pytest.raises(ValueError, match=message):
        validate(sample)


def test_validate_documents_reasoning_and_videos():
    doc = make_sample("interleaved", 0)
    doc["messages"].append({"role": "document", "content": [{"type": "text", "text": "x"}]})
    with pytest.raises(ValueError, match="exactly one 'document' message"):
        validate(doc)
    reasoning = make_sample("reasoning", 0)
    reasoning["messages"][-1]["content"][0]["text"] = "56"
    with pytest.raises(ValueError, match="<think>"):
        validate(reasoning)
    vid = make_sample("video", 0)
    vid["videos"][0]["timestamps"] = vid["videos"][0]["timestamps"][:-1]
    with pytest.raises(ValueError, match="one timestamp per frame"):
        validate(vid)


def test_jsonl_cli_writes_readable_shards_and_counts_bad_lines(tmp_path, capsys):
    media = tmp_path / "media"
    media.mkdir()
    y, x = np.mgrid[0:56, 0:84]
    pic = Image.fromarray(np.stack([x * 3, y * 4, x + y], axis=-1).astype(np.uint8))  # smooth, for JPEG
    pic.save(media / "a.png")
    pic.save(media / "b.jpg", quality=90)
    pic.save(media / "c.bmp")  # neither PNG nor JPEG: re-encoded as PNG
    for k in range(4):
        pic.rotate(90 * k).save(media / f"f{k}.jpg")
    (media / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    def chat(n_images=1, video=False):
        parts = (
            [{"type": "image"}] * n_images
            + ([{"type": "video"}] if video else [])
            + [{"type": "text", "text": "What?"}]
        )
        return [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": [{"type": "text", "text": "That."}]},
        ]

    good = [
        {
            "type": "qa",
            "messages": chat(),
            "meta": {"answer": "That."},
            "media": [{"kind": "image", "path": "a.png"}],
        },
        {"key": "jpeg", "type": "ocr", "messages": chat(), "media": [{"kind": "image", "path": "b.jpg"}]},
        {"type": "qa", "messages": chat(), "media": [{"kind": "image", "path": "c.bmp"}]},
        {
            "type": "video",
            "messages": chat(n_images=0, video=True),
            "meta": {"segment": [0, 1]},
            "media": [
                {"kind": "video", "frames": [f"f{k}.jpg" for k in range(4)], "timestamps": [0, 0.5, 1.0, 1.5]}
            ],
        },
    ]
    bad = [
        "{not json",
        json.dumps({"type": "qa", "messages": chat(), "media": [{"kind": "image", "path": "missing.png"}]}),
        json.dumps({"type": "qa", "messages": chat(), "media": [{"kind": "image", "path": "broken.png"}]}),
        json.dumps(
            {"type": "qa", "messages": chat(n_images=2), "media": [{"kind": "image", "path": "a.png"}]}
        ),
        json.dumps({"type": "poem", "messages": chat(), "media": [{"kind": "image", "path": "a.png"}]}),
        json.dumps(
            {"key": "jpeg", "type": "qa", "messages": chat(), "media": [{"kind": "image", "path": "a.png"}]}
        ),
    ]
    lines = [
        json.dumps(good[0]),
        bad[0],
        json.dumps(good[1]),
        bad[1],
        bad[2],
        json.dumps(good[2]),
        bad[3],
        bad[4],
        "",
        json.dumps(good[3]),
        bad[5],
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")

    argv = [
        "--jsonl",
        str(tmp_path / "in.jsonl"),
        "--media-root",
        str(media),
        "--out",
        str(tmp_path / "out" / "shard-%06d.tar"),
        "--maxcount",
        "3",
    ]
    assert main(argv) == 0
    report = capsys.readouterr().err
    assert "wrote 4 samples to 2 shards; skipped 6 bad lines" in report
    for lineno in (2, 4, 5, 7, 8, 11):
        assert f"line {lineno}:" in report

    shards = sorted(str(p) for p in (tmp_path / "out").glob("*.tar"))
    got = read_all(shards)
    got.sort(key=lambda s: s["key"])
    assert [s["key"] for s in got] == ["in_00000001", "in_00000006", "in_00000010", "jpeg"]
    assert got[0]["meta"] == {"answer": "That."} and got[3]["meta"] == {}
    assert np.array_equal(np.asarray(got[0]["images"][0]), np.asarray(pic))
    assert np.array_equal(np.asarray(got[1]["images"][0]), np.asarray(pic))
    assert np.abs(np.asarray(got[3]["images"][0], float) - np.asarray(pic, float)).mean() < 3
    video = got[2]["videos"][0]
    assert video["timestamps"] == [0, 0.5, 1.0, 1.5] and video["fps"] == 2.0 and len(video["frames"]) == 4
    with tarfile.open(shards[0]) as tar:  # JPEG stored as given, not re-encoded; shards in input order
        assert tar.extractfile("jpeg.img0.jpg").read() == (media / "b.jpg").read_bytes()

    # the same conversion from Python reports the same lines
    paths, written, skipped = write_jsonl_shards(
        tmp_path / "in.jsonl", media, str(tmp_path / "py" / "s-%02d.tar")
    )
    assert written == 4 and [n for n, _ in skipped] == [2, 4, 5, 7, 8, 11] and len(paths) == 1
    assert "duplicate key 'jpeg'" in skipped[-1][1]


def test_jsonl_cli_fails_and_leaves_nothing_when_no_line_is_good(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"type": "poem"}\nnot json\n')
    out = tmp_path / "out"
    assert main(["--jsonl", str(jsonl), "--out", f"{out}/s-%06d.tar"]) == 1
    assert not list(out.glob("*.tar"))
    with pytest.raises(SystemExit):
        main(["--jsonl", str(jsonl), "--out", f"{out}/no-placeholder.tar"])


def cut_last_member(path: Path) -> None:
    """Truncates a shard in the middle of its last member's data."""
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    os.truncate(path, last.offset_data + last.size // 2)


def planted_shard(path: Path) -> None:
    """One good caption sample, then one bad sample per skip reason, the last one cut inside its JSON: each pass
    over the shard loses one sample of every reason and makes one shard error, all reported with the next pass's
    good sample."""
    with wds.TarWriter(str(path)) as w:
        w.write(record(0))
        for i, reason in enumerate(sorted(PLANTED), start=1):
            w.write(PLANTED[reason](record(i)))
        w.write(record(len(PLANTED) + 1))
    cut_last_member(path)  # the last sample's json


def test_a_stage_run_reports_lost_samples_by_reason_and_shard_errors(tmp_path):
    shard = tmp_path / "planted-000000.tar"
    planted_shard(shard)
    summary = run_stage(
        tmp_path, "data=shards", f"+data.sources.caption={shard}", "data.num_workers=0", "stage.max_steps=2",
        "stage.seq_len=48", "stage.batch_size=1", "data.shuffle_buffer=1", "data.pack_buffer=2",
    )
    assert summary["steps"] == 2
    written = json.loads((Path(summary["output_dir"]) / "summary.json").read_text())
    assert {k: written[k] for k in ("skipped", "skipped_by_reason", "shard_errors")} == {
        k: summary[k] for k in ("skipped", "skipped_by_reason", "shard_errors")}
    # One 35-token sample per 48-token row, so the shard is read once per row; with 2 rows trained on and a
    # packing buffer of 2, the rows have read the good sample 3 times: the 2 passes between them lost 2 of each.
    assert set(SKIP_REASONS) == set(PLANTED) | {"truncated_member"}
    assert written["skipped_by_reason"] == dict.fromkeys(SKIP_REASONS, 2)
    assert written["shard_errors"] == 2 and written["skipped"] == 2 * len(SKIP_REASONS)


def test_a_seq_len_no_sample_fits_is_refused_before_training(tmp_path, monkeypatch):
    # chats of 70-odd tokens and more with the tiny tokenizer (a document longer than a row would be split)
    shards = write_shards([make_sample("qa", i) for i in range(8)], str(tmp_path / "qa-%06d.tar"),
                          progress=False)

    def no_training(*args):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(PretrainModule, "training_step", no_training)
    with pytest.raises(UsageError) as refused:
        run_stage(tmp_path, "data=shards", f"+data.sources.caption={shards[0]}", "data.num_workers=1",
                  "stage.seq_len=16")
    message = str(refused.value)
    assert message.startswith("stage.seq_len=16: only 0 of the first 8 'caption' samples fit in a packed row")
    assert "raise stage.seq_len to at least" in message and "DataLoader worker" not in message
    assert not list(tmp_path.rglob("summary.json"))


def test_the_reward_model_stage_reports_the_same_accounting(tmp_path):
    def preference(i, **changes):
        s = make_sample("preference", i)
        return {**_record(s["key"], s["type"], s["messages"], s["meta"], _encode_media(s, "png")), **changes}

    shard = tmp_path / "pref-000000.tar"
    with wds.TarWriter(str(shard)) as w:  # per pass: one good pair, a broken JSON, a sample cut short
        w.write(preference(0))
        w.write(preference(1, json=b"{not json"))
        w.write(preference(2))
    cut_last_member(shard)
    summary = run_stage(
        tmp_path, "stage=rm", "data=shards", f"+data.sources.preference={shard}", "data.num_workers=0",
        "stage.max_steps=2", "stage.seq_len=256", "stage.batch_size=1", "data.shuffle_buffer=1", "data.pack_buffer=2",
    )
    # one 183-token pair per 256-token row: as in the pre-training run above, the 2 rows saw 2 passes' losses
    assert summary["pairs"] == 2
    assert summary["skipped_by_reason"] == {**dict.fromkeys(SKIP_REASONS, 0), "bad_json": 2, "truncated_member": 2}
    assert summary["shard_errors"] == 2 and summary["skipped"] == 4
