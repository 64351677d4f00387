"""The curate command (mimovl.curate): dedup, decontam, filter, balance, ocr_augment, recaption, resume.

Fixtures are PIL images written into shards with write_shards; outputs are read back with the training reader.
"""

import io
import json
import os
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw, ImageFont

from mimovl.curate.__main__ import main
from mimovl.curate.balance import Balance
from mimovl.curate.decontam import Decontam
from mimovl.curate.dedup import Dedup
from mimovl.curate.ocr_augment import OcrAugment, OcrAugmentConfig, augment
from mimovl.curate.options import load_config
from mimovl.curate.phash import PhashIndex
from mimovl.curate.recaption import Recaption
from mimovl.curate.runner import REPORT, run_step
from mimovl.curate.textfilter import FilterConfig, TextFilter
from mimovl.data.schema import chat, document, image, text
from mimovl.data.shards import write_shards
from mimovl.data.stream import mixed_stream
from mimovl.data.synthetic import make_sample
from mimovl.errors import UsageError
from mimovl.generate.engines import Completion

# ---------------------------------------------------------------- fixtures


def caption(key: str, img: Image.Image, words: str) -> dict:
    return {"key": key, "type": "caption", "messages": document([image(), text(words)]), "images": [img],
            "videos": [], "meta": {}}


def write(root: Path, name: str, samples: list[dict], maxcount: int = 1000) -> str:
    """Write samples to root/name/name-%06d.tar; return a glob of the shards."""
    write_shards(samples, str(root / name / f"{name}-%06d.tar"), maxcount=maxcount, progress=False)
    return str(root / name / f"{name}-*.tar")


def read_back(pattern: str) -> dict[str, dict]:
    """Every sample of the output shards by key, through the training reader."""
    stream = mixed_stream({"s": {"urls": pattern, "weight": 1.0}}, seed=0, shuffle_buffer=0, resample=False,
                          video_fps=None, max_frames=None)
    return {s["key"]: s for s in stream}


def distinct_image(seed: int, size=(160, 128)) -> Image.Image:
    """Even seeds: shapes on a plain ground; odd seeds: a smooth colour texture. No two are near in phash
    (closest pair among 200 such images: distance 16)."""
    rng = np.random.RandomState(seed)
    if seed % 2:
        grid = rng.randint(0, 256, (rng.randint(3, 9), rng.randint(3, 9), 3), dtype=np.uint8)
        return Image.fromarray(grid).resize(size, Image.BICUBIC)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.randint(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 7)):
        x1, y1 = rng.randint(0, size[0] - 20), rng.randint(0, size[1] - 20)
        box = [x1, y1, x1 + rng.randint(15, 80), y1 + rng.randint(15, 70)]
        fill = tuple(int(v) for v in rng.randint(0, 256, 3))
        (draw.ellipse if rng.randint(2) else draw.rectangle)(box, fill=fill)
    return img


def resized(img: Image.Image) -> Image.Image:
    return img.resize((round(img.width * 0.8), round(img.height * 0.8)), Image.BILINEAR)


def jpeg60(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=60)
    return Image.open(buf).convert("RGB")


def cropped(img: Image.Image, share: float) -> Image.Image:
    dx, dy = round(img.width * share / 2), round(img.height * share / 2)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def small(seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (16, 16, 3), dtype=np.uint8))


# ---------------------------------------------------------------- phash index


@pytest.mark.parametrize("max_distance, bands", [(0, None), (3, None), (4, None), (10, None), (10, 11), (12, 6)])
def test_phash_index_finds_exactly_what_brute_force_finds(max_distance, bands):
    rng = random.Random(max_distance)
    index = PhashIndex(max_distance, bands)
    stored = [rng.getrandbits(64) for _ in range(2000)]
    queries = []
    for h in stored[:150]:  # planted neighbours at the threshold and just past it
        for d in (max_distance, max_distance + 1):
            flips = rng.sample(range(64), d)
            queries.append(h ^ sum(1 << b for b in flips))
    queries += [rng.getrandbits(64) for _ in range(100)]
    for i, h in enumerate(stored):
        index.add(h, i)
    assert len(index) == len(stored)
    for q in queries:
        want = sorted(((q ^ h).bit_count(), i) for i, h in enumerate(stored) if (q ^ h).bit_count() <= max_distance)
        assert index.near(q) == want
    assert sum(bool(index.near(q)) for q in queries[:300:2]) == 150  # every planted neighbour at the threshold


# ---------------------------------------------------------------- dedup


def test_dedup_drops_planted_near_duplicates_and_keeps_distinct_images(tmp_path):
    originals = {f"orig_{i:02d}": distinct_image(i) for i in range(24)}
    planted = {}  # key -> the original it copies
    for i in (0, 2, 4, 6):  # shapes: resized, re-encoded, cropped 3-5%
        original = originals[f"orig_{i:02d}"]
        crop = cropped(original, (0.03, 0.04, 0.05, 0.04)[i // 2])
        for name, img in (("resize", resized(original)), ("jpeg", jpeg60(original)), ("crop", crop)):
            planted[f"dup_{i:02d}_{name}"] = (f"orig_{i:02d}", img)
    for i in (1, 3, 5, 7):  # textures: resized, re-encoded
        planted[f"dup_{i:02d}_resize"] = (f"orig_{i:02d}", resized(originals[f"orig_{i:02d}"]))
        planted[f"dup_{i:02d}_jpeg"] = (f"orig_{i:02d}", jpeg60(originals[f"orig_{i:02d}"]))
    samples = [caption(k, img, "A picture.") for k, img in originals.items()]
    samples += [caption(k, img, "A picture.") for k, (_, img) in planted.items()]
    samples.append(make_sample("text", 0))  # no image: passes
    inputs = write(tmp_path, "cap", samples, maxcount=10)

    report = run_step(Dedup(), inputs, str(tmp_path / "dedup" / "cap-%06d.tar"), maxcount=10)

    assert report["counts"] == {"in": 45, "out": 25, "removed": 20, "removed_by_reason": {"near_duplicate": 20},
                                "modified": 0, "passed_through": 0, "read_errors": 0}
    removed = {r["key"]: r for r in report["removed"]}
    assert set(removed) == set(planted)
    for key, (original, _) in planted.items():
        assert removed[key]["duplicate_of"] == original and removed[key]["image"] == 0
        assert 0 <= removed[key]["distance"] <= 10
    kept = read_back(str(tmp_path / "dedup" / "cap-*.tar"))
    assert set(kept) == set(originals) | {"train_text_0000000"}
    assert report["stats"] == {"images_indexed": 24, "samples_without_images": 1}
    assert json.loads((tmp_path / "dedup" / REPORT).read_text())["counts"] == report["counts"]


# ---------------------------------------------------------------- decontam


def test_decontam_removes_copies_of_eval_images_and_names_the_match(tmp_path):
    evals = [caption(f"bench_{i}", distinct_image(100 + i), "An eval picture.") for i in range(3)]
    eval_shards = write(tmp_path, "eval", evals)
    image_dir = tmp_path / "eval_images" / "sub"
    image_dir.mkdir(parents=True)
    distinct_image(110).save(image_dir / "q7.png")
    train = [caption(f"train_{i:02d}", distinct_image(i), "A picture.") for i in range(10)]
    train.insert(4, caption("leak_a", jpeg60(distinct_image(101)), "A copy of an eval picture."))
    train.append(caption("leak_b", resized(distinct_image(110)), "Another copy."))
    inputs = write(tmp_path, "train", train, maxcount=5)

    step = Decontam([eval_shards, str(tmp_path / "eval_images")])
    report = run_step(step, inputs, str(tmp_path / "clean" / "train-%06d.tar"))

    assert report["counts"]["in"] == 12 and report["counts"]["out"] == 10
    assert report["counts"]["removed_by_reason"] == {"eval_overlap": 2}
    removed = {r["key"]: r for r in report["removed"]}
    assert removed["leak_a"]["eval_key"] == "bench_1" and removed["leak_a"]["eval_source"].endswith("eval-000000.tar")
    assert removed["leak_b"]["eval_key"] == os.path.join("sub", "q7.png")
    assert all(r["distance"] <= 10 for r in removed.values())
    assert set(read_back(str(tmp_path / "clean" / "*.tar"))) == {f"train_{i:02d}" for i in range(10)}
    assert report["stats"]["eval_images"] == 4


# ---------------------------------------------------------------- filter

BAD_TEXTS = {
    "bad_empty": ("", "too_short"),
    "bad_long": ("lorem " * 6000, "too_long"),
    "bad_control": ("A cat\x07 sits on a mat.", "control_chars"),
    "bad_noise": ("\ufffd\ufffd\ufffd a cat \U0001f600\U0001f600\U0001f600\U0001f600", "noise"),
    "bad_ngrams": ("The red circle is big. " * 6, "repeated_ngrams"),
    "bad_substring": ("x7Kp2QwZr9LmTn4VbYc8Hd3Jf6Gs5" * 2, "repeated_substring"),
}


def test_filter_drops_exactly_the_planted_bad_texts(tmp_path):
    good = [make_sample(t, i) for t in ("caption", "interleaved", "ocr", "qa", "reasoning", "preference", "text")
            for i in range(8)]
    bad = [caption(key, small(i), words) for i, (key, (words, _)) in enumerate(BAD_TEXTS.items())]
    samples = good[:20] + bad + good[20:]
    inputs = write(tmp_path, "mix", samples, maxcount=16)

    report = run_step(TextFilter(), inputs, str(tmp_path / "filtered" / "mix-%06d.tar"))

    assert {r["key"]: r["reason"] for r in report["removed"]} == {k: reason for k, (_, reason) in BAD_TEXTS.items()}
    assert report["counts"]["in"] == len(samples) and report["counts"]["out"] == len(good)
    assert report["counts"]["removed_by_reason"] == {reason: 1 for _, reason in BAD_TEXTS.values()}
    assert set(read_back(str(tmp_path / "filtered" / "*.tar"))) == {s["key"] for s in good}
    noise = next(r for r in report["removed"] if r["key"] == "bad_noise")
    assert noise["noise_fraction"] == 0.5 and noise["max_noise_fraction"] == 0.1


def test_filter_config_yaml_then_flags_override_defaults(tmp_path):
    path = tmp_path / "filter.yaml"
    path.write_text(yaml.safe_dump({"min_chars": 5, "max_noise_fraction": 0.2}))
    cfg = load_config(FilterConfig, str(path), {"min_chars": 7})
    assert (cfg.min_chars, cfg.max_noise_fraction, cfg.max_chars) == (7, 0.2, FilterConfig().max_chars)
    inputs = write(tmp_path, "cap", [caption(f"s_{n}", small(n), "x" * n) for n in (3, 6, 9)])
    out = tmp_path / "filtered" / "cap-%06d.tar"
    assert main(["filter", "--input", inputs, "--out", str(out), "--config", str(path), "--min-chars", "7"]) == 0
    report = json.loads((tmp_path / "filtered" / REPORT).read_text())
    assert report["params"]["min_chars"] == 7 and report["params"]["max_noise_fraction"] == 0.2
    assert [(r["key"], r["reason"]) for r in report["removed"]] == [("s_3", "too_short"), ("s_6", "too_short")]
    path.write_text(yaml.safe_dump({"min_char": 5}))
    with pytest.raises(UsageError, match="min_char"):
        load_config(FilterConfig, str(path))


# ---------------------------------------------------------------- balance


def balance_fixture(tmp_path: Path) -> str:
    samples = [caption(f"dog_{i:03d}", small(i), "A dog.") for i in range(300)]
    for j, animal in enumerate(("cat", "zebra", "lamp", "kite")):
        samples += [caption(f"{animal}_{i}", small(1000 + 10 * j + i), f"A {animal}.") for i in range(4)]
    samples += [caption(f"dogcat_{i}", small(2000 + i), "A dog and a cat.") for i in range(2)]
    samples.append(caption("nothing", small(3000), "It is a one."))  # only stopwords: no concept
    samples.append(make_sample("qa", 0))  # not a caption: passes
    random.Random(0).shuffle(samples)
    return write(tmp_path, "cap", samples, maxcount=64)


def test_balance_caps_the_head_concept_keeps_the_tail_and_is_seeded(tmp_path):
    inputs = balance_fixture(tmp_path)
    runs = {seed: run_step(Balance(t=20, seed=seed), inputs, str(tmp_path / f"bal{seed}" / "cap-%06d.tar"))
            for seed in range(5)}
    report = runs[0]
    kept = set(read_back(str(tmp_path / "bal0" / "*.tar")))
    dogs_kept = {k for k in kept if k.startswith("dog_")}
    assert {k for k in kept if not k.startswith("dog_")} == (
        {f"{a}_{i}" for a in ("cat", "zebra", "lamp", "kite") for i in range(4)}
        | {"dogcat_0", "dogcat_1", "train_qa_0000000"})  # tail concepts keep every sample
    # MetaCLIP: "dog" is matched by 302 captions; a dog-only caption is kept with probability t / 302
    assert report["counts"]["removed_by_reason"] == {"balanced_out": 300 - len(dogs_kept), "no_concept": 1}
    assert report["counts"]["passed_through"] == 1
    out = [r for r in report["removed"] if r["reason"] == "balanced_out"]
    assert all(r["concepts"] == [["dog", 302]] and r["p_keep"] == round(20 / 302, 6) for r in out)
    head = report["stats"]["head_concepts"][0]
    assert head == {"concept": "dog", "count": 302, "kept": len(dogs_kept) + 2}
    per_seed = [r["counts"]["out"] - 19 for r in runs.values()]  # dog-only captions kept per seed
    assert 10 <= min(per_seed) and max(per_seed) <= 32 and abs(np.mean(per_seed) - 300 * 20 / 302) < 5
    assert len({tuple(sorted(r["key"] for r in run["removed"])) for run in runs.values()}) == 5  # seeds differ

    again = run_step(Balance(t=20, seed=0), inputs, str(tmp_path / "bal0_again" / "cap-%06d.tar"))
    assert again["removed"] == report["removed"]  # the same seed: the same choice
    for a, b in zip(sorted((tmp_path / "bal0").glob("*.tar")), sorted((tmp_path / "bal0_again").glob("*.tar"))):
        assert a.read_bytes() == b.read_bytes()

    concepts = tmp_path / "concepts.txt"
    concepts.write_text("# animals\ndog\nzebra\n")
    listed = run_step(Balance(t=20, seed=0, concepts=str(concepts), keep_unmatched=True), inputs,
                      str(tmp_path / "bal_list" / "cap-%06d.tar"))
    removed = {r["key"] for r in listed["removed"]}
    assert {k for k in removed if k.startswith("dog_")} == {r["key"] for r in out}  # same counts, same draws
    assert removed <= {r["key"] for r in out} | {"dogcat_0", "dogcat_1"}  # "cat" is no concept now
    assert listed["stats"]["concepts"] == 2 and listed["counts"]["removed_by_reason"].keys() == {"balanced_out"}


# ---------------------------------------------------------------- ocr_augment

FORCED = OcrAugmentConfig(p_handwriting=0.0, p_occlusion=1.0, p_perspective=1.0, p_elastic=1.0, p_blur=1.0)


def rendered_words():
    """Black words on white at known boxes, and each word's ink mask (its dark pixels)."""
    img = Image.new("RGB", (224, 160), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=20)
    words = ["hello", "cat", "Open", "exit", "park42"]
    boxes = []
    for word, xy in zip(words, [(15, 15), (130, 20), (30, 70), (120, 80), (60, 120)]):
        draw.text(xy, word, fill=(0, 0, 0), font=font)
        boxes.append(list(draw.textbbox(xy, word, font=font)))
    dark = np.asarray(img).min(axis=2) < 128
    ink = np.zeros((len(words), *dark.shape), bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        ink[k, y1:y2 + 1, x1:x2 + 1] = dark[y1:y2 + 1, x1:x2 + 1]
    return img, boxes, words, torch.from_numpy(ink)


@pytest.fixture
def one_thread():
    """What the ocr_augment step does while it runs: small tensors, one torch thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("handwriting", [0.0, 1.0])
def test_ocr_augment_boxes_still_enclose_their_words_ink(handwriting, one_thread):
    img, boxes, words, ink = rendered_words()
    cfg = OcrAugmentConfig(**{**FORCED.__dict__, "p_handwriting": handwriting})
    for seed in range(4):
        out = augment(img, boxes, words, cfg, seed, ink=ink)
        assert set(out.applied) >= {"perspective", "elastic", "blur"} and out.image.size == img.size
        assert ("handwriting" in out.applied) == bool(handwriting)
        assert out.boxes != boxes and not torch.equal(out.ink, ink)
        for (x1, y1, x2, y2), mask in zip(out.boxes, out.ink.numpy()):
            ys, xs = np.nonzero(mask)
            assert len(xs) > 20
            inside = ((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)).mean()
            assert inside >= 0.95
            ink_area = (xs.max() + 1 - xs.min()) * (ys.max() + 1 - ys.min())
            assert (x2 - x1) * (y2 - y1) <= 2.5 * ink_area  # enclosing, and still about the word


def test_ocr_augment_step_rewrites_boxes_in_meta_and_answers(tmp_path):
    ocr = [make_sample("ocr", i) for i in range(10)]
    img, boxes, words, _ = rendered_words()
    spotted = {"key": "spotting", "type": "ocr", "images": [img], "videos": [],
               "messages": chat([image(), text("Where is the word cat?")], f"cat {json.dumps(boxes[1])}"),
               "meta": {"words": [{"text": w, "box": b} for w, b in zip(words, boxes)],
                        "answer": f"cat {json.dumps(boxes[1])}"}}
    samples = ocr + [spotted, make_sample("caption", 0)]
    inputs = write(tmp_path, "ocr", samples, maxcount=8)
    cfg = OcrAugmentConfig(**{**FORCED.__dict__, "p_occlusion": 0.0, "p_handwriting": 0.5})

    report = run_step(OcrAugment(cfg), inputs, str(tmp_path / "aug" / "ocr-%06d.tar"))

    assert report["counts"]["in"] == 12 and report["counts"]["out"] == 12 and report["counts"]["modified"] == 11
    assert report["stats"]["unchanged"] == {"no_word_boxes": 1}
    out = read_back(str(tmp_path / "aug" / "*.tar"))
    for sample in [*ocr, spotted]:
        got = out[sample["key"]]
        new_boxes = [w["box"] for w in got["meta"]["words"]]
        assert new_boxes != [w["box"] for w in sample["meta"]["words"]]
        dark = np.asarray(got["images"][0]).min(axis=2) < 160
        in_boxes = np.zeros_like(dark)
        for x1, y1, x2, y2 in new_boxes:
            assert dark[y1:y2, x1:x2].any()
            in_boxes[y1:y2, x1:x2] = True
        assert (dark & in_boxes).sum() >= 0.95 * dark.sum()
    got = out["spotting"]
    cat_box = got["meta"]["words"][1]["box"]
    assert got["messages"][-1]["content"][0]["text"] == f"cat {json.dumps(cat_box)}" == got["meta"]["answer"]
    unchanged, original = out["train_caption_0000000"], make_sample("caption", 0)
    assert unchanged["messages"] == original["messages"]
    assert np.array_equal(np.asarray(unchanged["images"][0]), np.asarray(original["images"][0]))


# ---------------------------------------------------------------- recaption


class FakeEngine:
    """The engine interface `generate(prompts, sampling, processor)`: answers by key, records its calls."""

    def __init__(self, answers: dict[str, Completion]):
        self.answers, self.calls = answers, []

    def generate(self, prompts, sampling, processor):
        self.calls.append((prompts, sampling, processor))
        return [[self.answers[p.key]] for p in prompts]


def test_recaption_keeps_new_captions_only_when_they_pass_the_repetition_check(tmp_path):
    samples = [caption(f"cap_{i}", small(i), f"Old caption {i}.") for i in range(5)] + [make_sample("qa", 0)]
    inputs = write(tmp_path, "cap", samples)
    answers = {
        "cap_0": Completion([1], " A small square of coloured noise. ", True),
        "cap_1": Completion([1], "A red circle. " * 8, True),  # repetitive
        "cap_2": Completion([1], "A picture of", False),  # cut at max_new_tokens
        "cap_3": Completion([1], "", True),
        "cap_4": Completion([1], "Random pixels in many colours.", True),
    }
    engine, processor = FakeEngine(answers), object()
    step = Recaption(engine=engine, processor=processor, batch_size=2)

    report = run_step(step, inputs, str(tmp_path / "recap" / "cap-%06d.tar"))

    assert [len(prompts) for prompts, _, _ in engine.calls] == [2, 2, 1]
    prompts, sampling, got_processor = engine.calls[0]
    assert got_processor is processor and sampling.temperature == 0.0 and sampling.n == 1
    assert prompts[0].sample["messages"] == [{"role": "user", "content": [image(), text("Describe this image.")]}]
    assert np.array_equal(np.asarray(prompts[0].sample["images"][0]), np.asarray(small(0)))
    assert report["counts"] == {"in": 6, "out": 6, "removed": 0, "removed_by_reason": {}, "modified": 2,
                                "passed_through": 1, "read_errors": 0}
    assert report["stats"] == {"recaptioned": 2, "kept_original": {"empty": 1, "repeated_ngrams": 1,
                                                                   "unfinished": 1}}
    out = read_back(str(tmp_path / "recap" / "*.tar"))
    captions = {k: s["messages"][0]["content"][1]["text"] for k, s in out.items() if k.startswith("cap_")}
    assert captions == {"cap_0": "A small square of coloured noise.", "cap_1": "Old caption 1.",
                        "cap_2": "Old caption 2.", "cap_3": "Old caption 3.",
                        "cap_4": "Random pixels in many colours."}
    assert out["cap_0"]["meta"] == {"original_caption": "Old caption 0."}
    assert np.array_equal(np.asarray(out["cap_0"]["images"][0]), np.asarray(small(0)))


# ---------------------------------------------------------------- resume and the command line


def test_rerun_skips_a_finished_step_and_an_interrupted_one_restarts_cleanly(tmp_path, capsys):
    samples = [caption(f"s_{i:02d}", distinct_image(i), "A picture.") for i in range(12)]
    samples.append(caption("s_dup", jpeg60(distinct_image(3)), "A copy."))
    inputs = write(tmp_path, "cap", samples, maxcount=5)
    out_dir = tmp_path / "dedup"
    args = ["dedup", "--input", inputs, "--out", str(out_dir / "cap-%06d.tar"), "--maxcount", "4"]

    assert main(args) == 0
    first = {p.name: p.read_bytes() for p in out_dir.glob("*.tar")}
    stamps = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    report = json.loads((out_dir / REPORT).read_text())
    assert report["done"] and report["counts"]["removed_by_reason"] == {"near_duplicate": 1}
    assert sorted(first) == [f"cap-{i:06d}.tar" for i in range(3)]  # 12 kept, 4 a shard

    assert main(args) == 0  # finished with these arguments: nothing is touched
    assert "already done" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()} == stamps

    # an interrupted run: no report, a half-written shard, a shard a longer earlier run left behind
    (out_dir / REPORT).unlink()
    (out_dir / "cap-000001.tar").write_bytes(first["cap-000001.tar"][:700])
    (out_dir / "cap-000007.tar").write_bytes(b"stale")
    (out_dir / "notes.txt").write_text("not ours")
    assert main(args) == 0
    assert {p.name: p.read_bytes() for p in out_dir.glob("*.tar")} == first  # the same bytes, nothing stale
    assert (out_dir / "notes.txt").exists()
    rerun = json.loads((out_dir / REPORT).read_text())
    assert {k: v for k, v in rerun.items() if k != "seconds"} == {k: v for k, v in report.items() if k != "seconds"}

    assert main(args + ["--max-distance", "0"]) == 0  # other arguments: the step runs again
    assert "already done" not in capsys.readouterr().out
    assert json.loads((out_dir / REPORT).read_text())["params"] == {"max_distance": 0}

    assert main(["dedup", "--input", inputs, "--out", str(tmp_path / "cap" / "cap-%06d.tar")]) == 2
    assert "input shards" in capsys.readouterr().err


def test_a_sample_that_does_not_decode_is_dropped_as_corrupt(tmp_path):
    inputs = write(tmp_path, "cap", [caption(f"s_{i}", small(i), f"Picture {i}.") for i in range(3)])
    shard = next(Path(tmp_path / "cap").glob("*.tar"))
    members = []
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()
            members.append((m, b"not a png" if m.name == "s_1.img0.png" else data))
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))

    report = run_step(TextFilter(), inputs, str(tmp_path / "out" / "cap-%06d.tar"))

    assert report["counts"]["in"] == 3 and report["counts"]["out"] == 2
    assert [(r["key"], r["reason"]) for r in report["removed"]] == [("s_1", "corrupt")]
    assert "UnidentifiedImageError" in report["removed"][0]["error"]


@pytest.mark.vllm
@pytest.mark.slow
def test_recaption_through_the_real_vllm_engine(tmp_path, vllm_engine, tiny_hf_dir):
    """The session's vLLM engine (a random tiny model, greedy) captions real images; every sample ends up with
    either its new caption or, with the reason counted, its old one."""
    from mimovl.model.build import load_hf

    model, processor = load_hf(tiny_hf_dir)
    vllm_engine.sync(model.state_dict().items())  # the shared engine serves whatever was synced last
    samples = [caption(f"cap_{i}", small(i), f"Old caption {i}.") for i in range(4)]
    inputs = write(tmp_path, "cap", samples)
    step = Recaption(engine=vllm_engine, processor=processor, max_new_tokens=16, batch_size=4)

    report = run_step(step, inputs, str(tmp_path / "recap" / "cap-%06d.tar"))

    stats = report["stats"]
    assert stats["recaptioned"] + sum(stats["kept_original"].values()) == 4
    assert report["counts"]["in"] == report["counts"]["out"] == 4
    out = read_back(str(tmp_path / "recap" / "*.tar"))
    new = [k for k, s in out.items() if "original_caption" in s["meta"]]
    assert len(new) == stats["recaptioned"]
    for key in new:  # a kept new caption is the model's finished, non-repetitive text
        assert out[key]["messages"][0]["content"][1]["text"] != out[key]["meta"]["original_caption"]
