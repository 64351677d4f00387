"""Converters from public layouts (mimovl.data.convert): fixtures written here, converted to shards, read back
with the training reader and checked value by value (boxes, points, times, image order, text); bad entries
are skipped and counted by reason; every converted sample encodes with the tiny processor."""

import json
from collections import Counter

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw

from mimovl.data.convert import convert_to_shards
from mimovl.data.convert.__main__ import main
from mimovl.data.convert.charades import mmss
from mimovl.data.convert.video import VideoDecodeError, decode_video, kept_fps
from mimovl.data.encode import IGNORE, encode
from mimovl.data.pairs import encode_response
from mimovl.data.stream import mixed_stream
from mimovl.model.processor import build_tiny_processor

RED, GREEN, BLUE, GREY = (200, 30, 30), (30, 160, 60), (40, 60, 210), (128, 128, 128)
LEVEL = 8  # test videos: frame k is a flat grey of k * LEVEL, so a decoded frame names its own index


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


def solid(path, colour, size=(84, 56)):
    Image.new("RGB", size, colour).save(path)
    return path.name


def write_json(path, rows):
    path.write_text(json.dumps(rows))
    return path


def write_jsonl(path, rows, broken_after=None):
    """One JSON value a line; `broken_after`: insert a line that does not parse after that many rows."""
    lines = [json.dumps(r) for r in rows]
    if broken_after is not None:
        lines.insert(broken_after, '{"prompt": "cut off')
    path.write_text("\n".join(lines) + "\n")
    return path


def write_mp4(path, n_frames=30, rate=10, size=(64, 48), faststart=False):
    """An H.264 mp4 (lossless, crf 0) whose frame k is grey level k * LEVEL."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for k in range(n_frames):
            pixels = np.full((size[1], size[0], 3), k * LEVEL, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def truncate(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def frame_index(img):
    return round(float(np.asarray(img, float).mean()) / LEVEL)


def convert(fmt, tmp_path, path, media_root=None, **options):
    """Convert, read every sample back in key order with the training reader; (samples, counts)."""
    out = tmp_path / "shards" / f"{fmt}-%06d.tar"
    shards, counts = convert_to_shards(fmt, path, media_root or tmp_path, str(out), maxcount=3, **options)
    stream = mixed_stream({fmt: {"urls": shards, "weight": 1.0}}, seed=0, shuffle_buffer=0, resample=False,
                          video_fps=None, max_frames=None)
    samples = sorted(stream, key=lambda s: s["key"])
    assert len(samples) == counts.written and sum(s["skipped_before"] for s in samples) == 0
    return samples, counts


def answer(sample):
    return sample["messages"][-1]["content"][0]["text"]


def texts(message):
    return [p["text"] if p["type"] == "text" else p["type"] for p in message["content"]]


def assert_encodes(sample, processor):
    """encode() works and learns the sample's text: every assistant turn (chats) or every text (documents)."""
    enc = encode(sample, processor)
    grids = {"images": enc.image_grid_thw, "videos": enc.video_grid_thw}
    for field, grid in grids.items():
        assert (0 if grid is None else len(grid)) == len(sample[field])
    learned = processor.tokenizer.decode(enc.targets[enc.targets != IGNORE])
    role = "document" if sample["messages"][0]["role"] == "document" else "assistant"
    if role == "document":  # every text token is learned but the first, which nothing precedes
        text_ids = enc.input_ids[enc.mm_token_type_ids == 0]
        assert int((enc.targets != IGNORE).sum()) == len(text_ids) - 1
        learned = processor.tokenizer.decode(text_ids)
    for m in sample["messages"]:
        for part in m["content"]:
            if m["role"] == role and part["type"] == "text":
                assert part["text"] in learned


def test_decode_video_keeps_the_frame_nearest_each_tick(tmp_path):
    mp4 = write_mp4(tmp_path / "v.mp4")  # 3 s at 10 fps: frames at 0.0, 0.1, ..., 2.9 s
    frames, ts = decode_video(mp4, fps=2.0, max_frames=256)
    assert [frame_index(f) for f in frames] == [0, 5, 10, 15, 20, 25]
    assert np.allclose(ts, [0, 0.5, 1.0, 1.5, 2.0, 2.5], atol=0.1)  # within one source frame
    assert frames[0].size == (64, 48) and frames[0].mode == "RGB" and kept_fps(ts, 2.0) == pytest.approx(2.0)
    frames, ts = decode_video(mp4, fps=2.0, max_frames=4)  # 4 ticks spread over 0..2.9 s
    assert [frame_index(f) for f in frames] == [0, 10, 19, 29]
    assert np.allclose(ts, [0, 1.0, 1.9, 2.9]) and kept_fps(ts, 2.0) == pytest.approx(3 / 2.9)


def test_decode_video_raises_on_truncated_or_missing_files(tmp_path):
    cut_index_last = truncate(write_mp4(tmp_path / "a.mp4"))  # the index (moov) comes last: cannot open
    cut_index_first = truncate(write_mp4(tmp_path / "b.mp4", faststart=True), 0.9)  # opens; frames are missing
    for path in (cut_index_last, cut_index_first, tmp_path / "none.mp4"):
        with pytest.raises(VideoDecodeError):
            decode_video(path, fps=2.0, max_frames=256)


def chat(human, gpt):
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


def test_llava_places_images_in_order_and_counts_bad_entries(tmp_path, processor):
    names = [solid(tmp_path / f"{c}.png", rgb) for c, rgb in (("r", RED), ("g", GREEN), ("b", BLUE))]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    ok = [
        {"id": "one", "image": names[0], "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes, red."}]},
        {"id": "two", "image": [names[2], names[1]], "conversations": [
            {"from": "human", "value": "Compare <image> with <image>\nwhich is bluer?"},
            {"from": "gpt", "value": "The first."}]},
        {"id": "three", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    ]
    bad = [
        {"image": [names[0], names[1]], "conversations": chat("<image> what?", "x")},  # one <image>, two images
        {"image": "absent.png", "conversations": chat("<image>", "x")},
        {"image": "broken.png", "conversations": chat("<image>", "x")},
        {"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
        {"image": names[0], "conversations": chat("a", "<image>")},
        {"id": "no conversations"},
    ]
    path = write_jsonl(tmp_path / "llava.jsonl", ok + bad, broken_after=3)
    samples, counts = convert("llava", tmp_path, path)
    assert (counts.read, counts.written) == (10, 3)
    assert counts.skipped == Counter(
        image_count_mismatch=1, image_missing=1, image_unreadable=1, bad_turns=1, image_in_answer=1,
        missing_field=1, broken_json=1,
    )
    one, two, three = samples
    assert [m["role"] for m in one["messages"]] == ["user", "assistant", "user", "assistant"]
    assert texts(one["messages"][0]) == ["image", "What colour is it?"] and answer(one) == "Yes, red."
    assert texts(two["messages"][0]) == ["Compare ", "image", " with ", "image", "which is bluer?"]
    assert [im.getpixel((0, 0)) for im in two["images"]] == [BLUE, GREEN]  # the entry's order
    assert three["images"] == [] and texts(three["messages"][0]) == ["Hi"]
    assert [s["meta"]["id"] for s in samples] == ["one", "two", "three"] and {s["type"] for s in samples} == {"qa"}
    for s in samples:
        assert_encodes(s, processor)


def boxed_image(path, box_xyxy, size=(120, 90)):
    """A white image with a red rectangle filling `box_xyxy` (x2, y2 exclusive)."""
    img = Image.new("RGB", size, (255, 255, 255))
    x1, y1, x2, y2 = box_xyxy
    ImageDraw.Draw(img).rectangle([x1, y1, x2 - 1, y2 - 1], fill=RED)
    img.save(path)
    return path.name


def test_refcoco_turns_xywh_into_pixel_boxes_one_sample_per_sentence(tmp_path, processor):
    a = boxed_image(tmp_path / "a.png", [10, 20, 40, 60])
    b = boxed_image(tmp_path / "b.png", [50, 5, 120, 35])
    rows = [
        {"image": a, "bbox": [10, 20, 30, 40], "sentences": ["the red box", "left thing"], "ref_id": 7},
        {"image": b, "bbox": [49.6, 5.2, 70.3, 29.9], "sentences": [{"sent": "top right"}]},  # rounds, clips 120
        {"image": a, "bbox": [100, 80, 30, 30], "sentences": ["off the edge"]},  # x2 = 130 in a 120-wide image
        {"image": a, "bbox": [10, 20, 0, 5], "sentences": ["no area"]},
        {"image": a, "bbox": [10, 20, 5, 5], "sentences": []},
    ]
    samples, counts = convert("refcoco", tmp_path, write_json(tmp_path / "refs.json", rows))
    assert (counts.read, counts.written) == (5, 3)
    assert counts.skipped == Counter(box_outside_image=1, bad_box=1, missing_field=1)
    boxes = [[10, 20, 40, 60], [10, 20, 40, 60], [50, 5, 120, 35]]
    labels = ["the red box", "left thing", "top right"]
    for s, box, label in zip(samples, boxes, labels):
        assert s["type"] == "grounding" and answer(s) == "[{}, {}, {}, {}]".format(*box)
        assert s["meta"] == {"task": "grounding_box", "answer": box, "box": box, "label": label,
                             **({"ref_id": 7} if label != "top right" else {})}
        assert label in s["messages"][0]["content"][1]["text"]
        x1, y1, x2, y2 = box
        img = s["images"][0]
        assert img.getpixel((x1, y1)) == img.getpixel((x2 - 1, y2 - 1)) == RED  # the box is the red region
        assert img.getpixel((x1 - 1, y1)) == (255, 255, 255)
        assert_encodes(s, processor)
    assert [s["key"].rsplit("_", 1)[1] for s in samples] == ["00", "01", "00"]


@pytest.mark.parametrize("box_format", ["xywh", "xyxy"])
def test_screenspot_answers_a_click_at_the_box_centre(tmp_path, processor, box_format):
    shot = boxed_image(tmp_path / "shot.png", [20, 30, 60, 50])
    source_box = [20, 30, 40, 20] if box_format == "xywh" else [20, 30, 60, 50]
    outside = [100, 80, 50, 50] if box_format == "xywh" else [100, 80, 150, 130]  # in a 120x90 screenshot
    rows = [
        {"img_filename": shot, "bbox": source_box, "instruction": "open settings", "data_type": "icon"},
        {"img_filename": shot, "bbox": outside, "instruction": "outside"},
        {"img_filename": "missing.png", "bbox": source_box, "instruction": "gone"},
        {"img_filename": shot, "bbox": source_box},
    ]
    samples, counts = convert("screenspot", tmp_path, write_json(tmp_path / "ss.json", rows), box_format=box_format)
    assert counts.skipped == Counter(box_outside_image=1, image_missing=1, missing_field=1)
    (s,) = samples
    assert s["type"] == "gui" and json.loads(answer(s)) == {"action": "click", "point": [40, 40]}
    assert s["meta"] == {"task": "grounding_point", "answer": [20, 30, 60, 50], "box": [20, 30, 60, 50],
                         "action": "click", "point": [40, 40], "data_type": "icon"}
    assert s["images"][0].getpixel((40, 40)) == RED and "open settings" in s["messages"][0]["content"][1]["text"]
    assert_encodes(s, processor)


def test_charades_decodes_each_moment_with_times(tmp_path, processor):
    write_mp4(tmp_path / "V1.mp4")
    truncate(write_mp4(tmp_path / "V2.mp4"))
    lines = [
        "V1 0.5 1.5##a person opens a door.",
        "V1 1 2.9##a person sits down.",
        "V2 0.0 1.0##cut short.",
        "V3 0.0 1.0##no such video.",
        "V1 2.0 1.0##ends before it starts.",
        "V1 5.0 6.0##after the end.",
        "V1 0.0 1.0 a line without the separator",
    ]
    path = tmp_path / "charades_sta_train.txt"
    path.write_text("\n".join(lines) + "\n")
    samples, counts = convert("charades", tmp_path, path)
    assert (counts.read, counts.written) == (7, 2)
    assert counts.skipped == Counter(video_unreadable=1, video_missing=1, bad_segment=1, segment_outside_video=1,
                                     bad_line=1)
    opens, sits = samples
    assert answer(opens) == "[00:00.5,00:01.5]" and answer(sits) == "[00:01,00:02.9]"
    assert opens["meta"] == {"task": "temporal_grounding", "answer": [0.5, 1.5], "segment": [0.5, 1.5],
                             "video_id": "V1", "label": "a person opens a door."}
    assert sits["meta"]["answer"] == [1.0, 2.9]
    for s in samples:
        (v,) = s["videos"]
        assert s["type"] == "video" and v["fps"] == pytest.approx(2.0)
        assert [frame_index(f) for f in v["frames"]] == [0, 5, 10, 15, 20, 25]  # JPEG in the shard: close enough
        assert np.allclose(v["timestamps"], [0, 0.5, 1.0, 1.5, 2.0, 2.5], atol=0.1)
    assert_encodes(opens, processor)
    capped, _ = convert("charades", tmp_path / "capped", path, media_root=tmp_path, max_frames=4)
    assert [frame_index(f) for f in capped[0]["videos"][0]["frames"]] == [0, 10, 19, 29]


def test_mmss_formats_tenths_only_when_there_are_some():
    assert [mmss(t) for t in (0, 6.9, 61, 125.25, 59.96)] == ["00:00", "00:06.9", "01:01", "02:05.2", "01:00"]


def test_mathvista_free_form_and_multiple_choice(tmp_path, processor):
    img = solid(tmp_path / "q.png", GREY)
    rows = [
        {"pid": "1", "image": img, "question": "What is x?", "answer": "145", "choices": None},
        {"pid": "2", "image": img, "question": "Which angle?", "answer": "55°", "choices": ["35°", "55°", "145°"]},
        {"pid": "3", "image": img, "question": "Which one?", "answer": "(C)", "choices": ["a", "b", "c"]},
        {"pid": "4", "image": img, "question": "Which?", "answer": "90°", "choices": ["35°", "55°"]},
        {"pid": "5", "image": img, "answer": "1"},
    ]
    samples, counts = convert("mathvista", tmp_path, write_json(tmp_path / "testmini.json", rows))
    assert counts.skipped == Counter(answer_not_in_choices=1, missing_field=1) and counts.written == 3
    free, angle, letter = samples
    assert answer(free) == "145" and free["meta"] == {"task": "math", "answer": "145", "id": "1"}
    assert texts(free["messages"][0]) == ["image", "What is x?"]
    assert answer(angle) == "B" and angle["meta"] == {"task": "multiple_choice", "answer": "B",
                                                      "choices": ["35°", "55°", "145°"], "id": "2"}
    assert angle["messages"][0]["content"][1]["text"] == (
        "Which angle?\n(A) 35°\n(B) 55°\n(C) 145°\nAnswer with the option's letter."
    )
    assert answer(letter) == "C" and letter["meta"]["answer"] == "C"
    for s in samples:
        assert_encodes(s, processor)


def test_a_broken_json_file_is_counted_once(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"image": "a.png", "question": "q", "answer": "1"}, {"image": ')
    out = tmp_path / "out" / "x-%06d.tar"
    _, counts = convert_to_shards("mathvista", path, tmp_path, str(out))
    assert (counts.read, counts.written, counts.skipped) == (1, 0, Counter(broken_json_file=1))


def test_obelics_and_mmc4_documents_keep_reading_order(tmp_path, processor):
    r, g, b = (solid(tmp_path / f"{c}.png", rgb) for c, rgb in (("r", RED), ("g", GREEN), ("b", BLUE)))
    rows = [
        {"texts": ["Title", "First paragraph.", None, "After the picture.", None],
         "images": [None, None, g, None, r]},
        {"text_list": ["One.", "Two.", "Three."],
         "image_info": [{"image_name": b, "matched_text_index": 1}, {"image_name": r, "matched_text_index": 1}]},
        {"texts": ["a", None], "images": [None, None]},
        {"texts": ["a", None], "images": [None, "missing.png"]},
        {"texts": ["only text"], "images": [None]},
        {"text_list": ["x"], "image_info": [{"image_name": r, "matched_text_index": 3}]},
    ]
    samples, counts = convert("obelics", tmp_path, write_jsonl(tmp_path / "docs.jsonl", rows))
    assert counts.skipped == Counter(misaligned=2, image_missing=1, no_images=1) and counts.written == 2
    obelics, mmc4 = samples
    assert texts(obelics["messages"][0]) == ["Title\n\nFirst paragraph.", "image", "After the picture.", "image"]
    assert [im.getpixel((0, 0)) for im in obelics["images"]] == [GREEN, RED]
    assert texts(mmc4["messages"][0]) == ["One.", "image", "image", "Two. Three."]
    assert [im.getpixel((0, 0)) for im in mmc4["images"]] == [BLUE, RED]
    for s in samples:
        assert s["type"] == "interleaved" and s["messages"][0]["role"] == "document"
        assert_encodes(s, processor)


def test_preference_pairs_end_with_the_prompt(tmp_path, processor):
    img = solid(tmp_path / "p.png", RED)
    rows = [
        {"prompt": "What colour?", "image": img, "chosen": "Red.", "rejected": "Blue."},
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
        {"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."},
        {"prompt": "Unreadable", "image": "missing.png", "chosen": "a", "rejected": "b"},
    ]
    samples, counts = convert("preference", tmp_path, write_jsonl(tmp_path / "pairs.jsonl", rows, broken_after=1))
    assert counts.skipped == Counter(same_answers=1, image_missing=1, broken_json=1) and counts.written == 2
    pictured, text_only = samples
    assert pictured["messages"] == [{"role": "user", "content": [{"type": "image"},
                                                                {"type": "text", "text": "What colour?"}]}]
    assert pictured["meta"] == {"chosen": "Red.", "rejected": "Blue."} and pictured["images"][0].getpixel((0, 0)) == RED
    assert text_only["images"] == [] and texts(text_only["messages"][0]) == ["Say hi."]
    for s in samples:
        chosen = encode_response(s, s["meta"]["chosen"], processor)
        learned = processor.tokenizer.decode(chosen.targets[chosen.targets != IGNORE])
        assert s["meta"]["chosen"] in learned


def test_cli_prints_counts_and_leaves_no_shard_when_nothing_converts(tmp_path, capsys):
    shot = boxed_image(tmp_path / "shot.png", [20, 30, 60, 50])
    rows = [{"img_filename": shot, "bbox": [20, 30, 40, 20], "instruction": "ok"},
            {"img_filename": "missing.png", "bbox": [20, 30, 40, 20], "instruction": "gone"}]
    path = write_json(tmp_path / "ss.json", rows)
    out = tmp_path / "out"
    assert main(["screenspot", "--input", str(path), "--media-root", str(tmp_path),
                 "--out", str(out / "ss-%06d.tar")]) == 0
    err = capsys.readouterr().err
    assert "read 2, wrote 1, skipped 1 (image_missing 1)" in err and sorted(p.name for p in out.iterdir()) == [
        "ss-000000.tar"
    ]
    write_json(path, rows[1:])
    assert main(["screenspot", "--input", str(path), "--media-root", str(tmp_path),
                 "--out", str(tmp_path / "none" / "ss-%06d.tar")]) == 1
    assert not list((tmp_path / "none").glob("*.tar"))
    with pytest.raises(SystemExit):  # llava takes no --fps
        main(["llava", "--input", str(path), "--out", str(out / "x-%06d.tar"), "--fps", "1"])
