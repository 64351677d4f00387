"""Synthetic, checkable samples of every type, drawn with PIL, for tests and CPU smoke runs.

    shards = ensure_synthetic("data/synth", n_per_type=256)            # {type: [shard paths]}, split "train"
    held = ensure_synthetic("data/synth", n_per_type=64, split="heldout")

Layout: root/{split}/{type}/{type}-%06d.tar plus root/{split}/DONE.json (written last; ensure_synthetic
regenerates only when it is missing or was written with other arguments).

The tasks use a vocabulary of a few dozen words (COLORS, SHAPES, WORDS, BUTTONS, number words), so a tiny
byte-level BPE covers them. Scenes place shapes in the cells of a 28-pixel grid, so objects never overlap and
every box is exact. Each sample draws from its own random.Random seeded by (split, seed, type, index): the
output depends only on those, and "heldout" never shares a random stream with "train".
Samples meant for RL carry meta["task"] (a key of mimovl.rewards.REWARDS) and meta["answer"]. Preference pairs
are checkable too: the chosen answer is right (a colour, a count, a sum) or polite and helpful, the rejected one
wrong or rude; half of them are text-only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from collections import Counter
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mimovl.data.schema import SAMPLE_TYPES, chat, document, image, text, video
from mimovl.data.shards import write_shards

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 190, 20)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("cat", "dog", "sun", "map", "box", "tree", "book", "milk", "open", "stop", "exit", "park")
BUTTONS = ("OK", "Cancel", "Save", "Open", "Close", "Next", "Back", "Help")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CELL = 28  # grid cell: one shape per cell, and the ViT patch (14) times the 2x2 merge
DONE = "DONE.json"


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _plural(n: int, color: str, shape: str) -> str:
    return f"{'a' if n == 1 else NUMBER_WORDS[n]} {color} {shape}{'' if n == 1 else 's'}"


def _describe(objects: list[dict]) -> str:
    """'two blue squares and a red circle' (groups in order of first appearance)."""
    groups = Counter((o["color"], o["shape"]) for o in objects)
    phrases = [_plural(n, c, s) for (c, s), n in groups.items()]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _mmss(seconds: int) -> str:
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, color: str, box: list[int]) -> None:
    x1, y1, x2, y2 = box
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x1 + x2) // 2, y1), (x1, y2), (x2, y2)], fill=fill)


def _scene(
    rng: random.Random, size: tuple[int, int], kinds: list[tuple[str, str]]
) -> tuple[Image.Image, list[dict]]:
    """Draw one shape per (color, shape) in `kinds`, each in its own grid cell; return the image and objects
    [{"color", "shape", "box": [x1, y1, x2, y2]}] in drawing order (boxes in absolute pixels, inclusive)."""
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    cols, rows = size[0] // CELL, size[1] // CELL
    objects = []
    for (color, shape), cell in zip(kinds, rng.sample(range(cols * rows), len(kinds))):
        side = rng.randint(14, 24)
        x1 = (cell % cols) * CELL + rng.randint(0, CELL - 1 - side)
        y1 = (cell // cols) * CELL + rng.randint(0, CELL - 1 - side)
        box = [x1, y1, x1 + side, y1 + side]
        _draw_shape(draw, shape, color, box)
        objects.append({"color": color, "shape": shape, "box": box})
    return img, objects


def _kinds(rng: random.Random, n: int) -> list[tuple[str, str]]:
    return [(rng.choice(list(COLORS)), rng.choice(SHAPES)) for _ in range(n)]


def _distinct_kinds(rng: random.Random, n: int) -> list[tuple[str, str]]:
    return rng.sample([(c, s) for c in COLORS for s in SHAPES], n)


def _text_image(
    rng: random.Random, size: tuple[int, int], lines: list[str]
) -> tuple[Image.Image, list[dict]]:
    """Render each line in its own 28-pixel row at a random x; return the image and [{"text", "box"}]."""
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    rows = rng.sample(range(size[1] // CELL), len(lines))
    words = []
    for line, row in sorted(zip(lines, rows), key=lambda lr: lr[1]):  # reading order: top to bottom
        width = draw.textbbox((0, 0), line, font=_font(14))[2]
        xy = (rng.randint(2, max(2, size[0] - width - 2)), row * CELL + rng.randint(2, 8))
        draw.text(xy, line, fill=(0, 0, 0), font=_font(14))
        words.append({"text": line, "box": list(draw.textbbox(xy, line, font=_font(14)))})
    return img, words


def _caption(rng, size):
    img, objects = _scene(rng, size, _kinds(rng, rng.randint(1, 4)))
    return document([image(), text(_describe(objects).capitalize() + ".")]), [img], [], {"objects": objects}


def _interleaved(rng, size):
    (a, obj_a), (b, obj_b) = (_scene(rng, size, _kinds(rng, rng.randint(1, 3))) for _ in range(2))
    parts = [
        text("Here are two pictures."),
        image(),
        text(f"The first shows {_describe(obj_a)}."),
        image(),
        text(
            f"The second shows {_describe(obj_b)}. "
            f"Together they hold {NUMBER_WORDS[len(obj_a) + len(obj_b)]} shapes."
        ),
    ]
    return document(parts), [a, b], [], {"objects": [obj_a, obj_b]}


def _ocr(rng, size):
    lines = [
        rng.choice(WORDS) if rng.random() < 0.7 else str(rng.randint(0, 99)) for _ in range(rng.randint(1, 2))
    ]
    img, words = _text_image(rng, size, lines)
    answer = " ".join(w["text"] for w in words)
    return (
        chat([image(), text("What text is written in the image?")], answer),
        [img],
        [],
        {"words": words, "answer": answer},
    )


def _grounding(rng, size):
    img, objects = _scene(rng, size, _distinct_kinds(rng, rng.randint(2, 5)))
    target = rng.choice(objects)
    label = f"{target['color']} {target['shape']}"
    question = f"Locate the {label} and give its bounding box as [x1, y1, x2, y2]."
    meta = {
        "task": "grounding_box",
        "answer": target["box"],
        "box": target["box"],
        "label": label,
        "objects": objects,
    }
    return chat([image(), text(question)], json.dumps(target["box"])), [img], [], meta


def _gui(rng, size):
    img = Image.new("RGB", size, (235, 235, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, size[0] - 1, 9], fill=(60, 60, 90))  # title bar
    cols, rows = size[0] // (2 * CELL), (size[1] - CELL) // CELL
    buttons = []
    cells = rng.sample(range(cols * rows), min(4, cols * rows))
    for label, cell in zip(rng.sample(BUTTONS, rng.randint(2, len(cells))), cells):
        x1 = (cell % cols) * 2 * CELL + rng.randint(1, 6)
        y1 = CELL // 2 + (cell // cols) * CELL + rng.randint(1, 6)
        box = [x1, y1, x1 + 46, y1 + 18]
        draw.rectangle(box, fill=(250, 250, 250), outline=(90, 90, 90))
        draw.text(
            ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), label, fill=(0, 0, 0), font=_font(10), anchor="mm"
        )
        buttons.append({"label": label, "box": box})
    target = rng.choice(buttons)
    point = [(target["box"][0] + target["box"][2]) // 2, (target["box"][1] + target["box"][3]) // 2]
    answer = json.dumps({"action": "click", "point": point})
    meta = {
        "task": "grounding_point",
        "answer": target["box"],
        "action": "click",
        "point": point,
        "target": target["label"],
        "buttons": buttons,
    }
    return chat([image(), text(f"Click the {target['label']} button.")], answer), [img], [], meta


def _video(rng, size, fps=2.0):
    n = 2 * rng.randint(4, 8)  # 8-16 frames at 2 fps: 4-8 seconds
    duration = int(n / fps)
    start = rng.randint(0, duration - 1)
    end = rng.randint(start + 1, duration)
    (color, shape), *others = _distinct_kinds(rng, 3)
    shown, objects = _scene(rng, size, [(color, shape)] + others)
    hidden = shown.copy()  # the same frame with the target's cell blanked: nothing else changes
    ImageDraw.Draw(hidden).rectangle(objects[0]["box"], fill=(255, 255, 255))
    timestamps = [k / fps for k in range(n)]
    frames = [shown if start <= t < end else hidden for t in timestamps]
    question = f"When is the {color} {shape} visible? Answer as [mm:ss,mm:ss]."
    meta = {
        "task": "temporal_grounding",
        "answer": [start, end],
        "segment": [start, end],
        "label": f"{color} {shape}",
        "box": objects[0]["box"],
    }
    answer = f"[{_mmss(start)},{_mmss(end)}]"
    return (
        chat([video(), text(question)], answer),
        [],
        [{"frames": frames, "timestamps": timestamps, "fps": fps}],
        meta,
    )


def _counting(rng, size):
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    count = rng.randint(1, min(5, (size[0] // CELL) * (size[1] // CELL) - 3))
    others = [k for k in _kinds(rng, rng.randint(0, 3)) if k != (color, shape)]
    kinds = [(color, shape)] * count + others
    rng.shuffle(kinds)
    img, objects = _scene(rng, size, kinds)
    messages = chat([image(), text(f"How many {color} {shape}s are there?")], str(count))
    return messages, [img], [], {"task": "counting", "answer": count, "count": count, "objects": objects}


def _colours(rng, size):
    kinds = [(rng.choice(list(COLORS)), s) for s in rng.sample(SHAPES, 2)]
    img, objects = _scene(rng, size, kinds)
    (c1, s1), (c2, s2) = kinds
    messages = chat([image(), text(f"What colour is the {s1}?")], c1)
    messages += [
        {"role": "user", "content": [text(f"And the {s2}?")]},
        {"role": "assistant", "content": [text(c2)]},
    ]
    return messages, [img], [], {"answer": [c1, c2], "objects": objects}


def _sum_image(rng, size):
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    img, _ = _text_image(rng, size, [f"{a} + {b}"])
    meta = {"task": "math", "answer": str(a + b), "expression": f"{a} + {b}"}
    return chat([image(), text("What is the result of the sum in the image?")], str(a + b)), [img], [], meta


def _reasoning_count(rng, size):
    img, objects = _scene(rng, size, _kinds(rng, rng.randint(2, 5)))
    groups = Counter((o["color"], o["shape"]) for o in objects)
    steps = " ".join(f"There {'is' if n == 1 else 'are'} {_plural(n, c, s)}." for (c, s), n in groups.items())
    total = len(objects)
    answer = f"<think>{steps} {' + '.join(str(n) for n in groups.values())} = {total}.</think>{total}"
    meta = {"task": "counting", "answer": total}
    return chat([image(), text("How many shapes are there in total?")], answer), [img], [], meta


def _reasoning_math(rng, size):
    a, b, c = rng.randint(1, 20), rng.randint(2, 9), rng.randint(2, 9)
    expression = f"{a} + {b} * {c}"
    img, _ = _text_image(rng, size, [expression])
    steps = f"The image shows {expression}. First {b} * {c} = {b * c}. Then {a} + {b * c} = {a + b * c}."
    answer = f"<think>{steps}</think>{a + b * c}"
    meta = {"task": "math", "answer": str(a + b * c), "expression": expression}
    return chat([image(), text("Compute the expression in the image.")], answer), [img], [], meta


def _text(rng, size):
    sentences = []
    for _ in range(rng.randint(2, 4)):
        (c1, s1), (c2, s2) = _distinct_kinds(rng, 2)
        a, b, word = rng.randint(0, 4), rng.randint(0, 5), rng.choice(WORDS)
        sentences.append(
            rng.choice(
                [
                    f"The {c1} {s1} is left of the {c2} {s2}.",
                    f"{NUMBER_WORDS[a].capitalize()} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}.",
                    f"A {s1} can be {c1} or {c2}.",
                    f"The word {word} has {NUMBER_WORDS[len(word)]} letters.",
                ]
            )
        )
    return document([text(" ".join(sentences))]), [], [], {}


def _preference(prompt: list[dict], chosen: str, rejected: str, **facts) -> tuple[list[dict], dict]:
    return [{"role": "user", "content": prompt}], {"chosen": chosen, "rejected": rejected, **facts}


def _big_shape(draw: ImageDraw.ImageDraw, rng: random.Random, shape: str, color: str, area: list[int]) -> dict:
    """Draw a shape filling most of `area` [x1, y1, x2, y2] (exclusive); return its object record."""
    x1, y1, x2, y2 = area
    side = rng.randint((x2 - x1) * 3 // 4, x2 - x1 - 1)
    x, y = rng.randint(x1, x2 - 1 - side), rng.randint(y1, y2 - 1 - side)
    _draw_shape(draw, shape, color, [x, y, x + side, y + side])
    return {"color": color, "shape": shape, "box": [x, y, x + side, y + side]}


# Preference pictures draw few, large shapes: a small model must read the colours and the count from them.
def _pref_colour(rng, size):
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    img = Image.new("RGB", size, (255, 255, 255))
    objects = [_big_shape(ImageDraw.Draw(img), rng, shape, color, [0, 0, size[0], size[1]])]
    wrong = rng.choice([c for c in COLORS if c != color])
    messages, meta = _preference([image(), text(f"What colour is the {shape}?")], color, wrong, objects=objects)
    return messages, [img], [], meta


def _pref_count(rng, size):
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    count = rng.randint(1, 3)
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    w, h = size[0] // 2, size[1] // 2
    quadrants = rng.sample([[x, y, x + w, y + h] for x in (0, w) for y in (0, h)], count)
    objects = [_big_shape(draw, rng, shape, color, q) for q in quadrants]
    wrong = rng.choice([n for n in range(1, 4) if n != count])
    prompt = [image(), text(f"How many {color} {shape}s are there?")]
    messages, meta = _preference(prompt, str(count), str(wrong), count=count, objects=objects)
    return messages, [img], [], meta


def _pref_sum(rng, size):
    a, b = rng.randint(1, 3), rng.randint(1, 3)
    wrong = rng.choice([n for n in range(2, 7) if n != a + b])
    messages, meta = _preference([text(f"What is {a} plus {b}?")], str(a + b), str(wrong), expression=f"{a} + {b}")
    return messages, [], [], meta


def _pref_manners(rng, size):
    word = rng.choice(WORDS)
    question, answer = rng.choice([
        (f"How many letters does the word {word} have?", f"The word {word} has {NUMBER_WORDS[len(word)]} letters."),
        (f"Can you spell the word {word}?", f"{word} is spelled {'-'.join(word)}."),
        (f"Please write the word {word} in capitals.", f"In capitals it is {word.upper()}."),
    ])
    polite = f"{rng.choice(['Sure!', 'Of course!', 'Happy to help.'])} {answer}"
    rude = rng.choice(["No. Do it yourself.", "Why would I help you?", f"Stop asking me about {word}.", "Whatever."])
    messages, meta = _preference([text(question)], polite, rude)
    return messages, [], [], meta


# one maker per type; qa, reasoning and preference cycle through their variants by index, so every shard holds
# all of them (preference: half multimodal, half text-only)
_MAKERS = {
    "caption": (_caption,),
    "interleaved": (_interleaved,),
    "ocr": (_ocr,),
    "grounding": (_grounding,),
    "gui": (_gui,),
    "video": (_video,),
    "qa": (_counting, _colours, _sum_image),
    "reasoning": (_reasoning_math, _reasoning_count),
    "text": (_text,),
    "preference": (_pref_colour, _pref_sum, _pref_count, _pref_manners),
}


def make_sample(
    sample_type: str, index: int, seed: int = 0, split: str = "train", image_size=(112, 112)
) -> dict:
    """One synthetic schema sample (without "source" / "skipped_before"); a pure function of its arguments."""
    rng = random.Random(f"{split}/{seed}/{sample_type}/{index}")
    size = tuple(image_size)
    if min(size) < 84:
        raise ValueError(f"image_size {size}: at least 84x84 (three 28-pixel cells a side)")
    variants = _MAKERS[sample_type]
    messages, images, videos, meta = variants[index % len(variants)](rng, size)
    return {
        "key": f"{split}_{sample_type}_{index:07d}",
        "type": sample_type,
        "messages": messages,
        "images": images,
        "videos": videos,
        "meta": meta,
    }


def write_synthetic(
    root,
    n_per_type: int = 256,
    seed: int = 0,
    image_size=(112, 112),
    split: str = "train",
    shard_size: int = 128,
    types=SAMPLE_TYPES,
) -> dict[str, list[str]]:
    """Write `n_per_type` samples of each type to root/{split}/{type}/{type}-%06d.tar, then the DONE marker.

    Returns {type: [shard paths]}. Image sizes: (width, height), best multiples of 28, at least 84x84.
    """
    out = Path(root) / split
    shards = {}
    for t in types:
        samples = (make_sample(t, i, seed, split, image_size) for i in range(n_per_type))
        shards[t] = write_shards(samples, str(out / t / f"{t}-%06d.tar"), maxcount=shard_size, progress=False)
    params = _params(n_per_type, seed, image_size, shard_size, types)
    shards_rel = {t: [os.path.relpath(p, out) for p in ps] for t, ps in shards.items()}
    (out / DONE).write_text(json.dumps({"params": params, "shards": shards_rel}, indent=1))
    return shards


def ensure_synthetic(
    root,
    n_per_type: int = 256,
    seed: int = 0,
    image_size=(112, 112),
    split: str = "train",
    shard_size: int = 128,
    types=SAMPLE_TYPES,
) -> dict[str, list[str]]:
    """write_synthetic unless root/{split} already holds a complete set written with the same arguments.

    Safe to call from several processes at once: each writes into a private directory and renames it into
    place; the first rename wins.
    """
    params = _params(n_per_type, seed, image_size, shard_size, types)
    out = Path(root) / split
    found = _read_done(out)
    if found is not None and found["params"] == params:
        return {t: [str(out / p) for p in ps] for t, ps in found["shards"].items()}
    tmp = Path(root) / f".tmp-{uuid.uuid4().hex}"
    write_synthetic(tmp, n_per_type, seed, image_size, split, shard_size, types)
    if _read_done(out) != _read_done(tmp / split):  # else another process finished the same set meanwhile
        shutil.rmtree(out, ignore_errors=True)  # interrupted, or written with other arguments
        try:
            os.rename(tmp / split, out)
        except OSError:
            pass  # another process renamed its identical set into place first
    shutil.rmtree(tmp, ignore_errors=True)
    found = _read_done(out)
    if found is None or found["params"] != params:
        raise RuntimeError(
            f"{out}: another process wrote synthetic data with other arguments at the same time"
        )
    return {t: [str(out / p) for p in ps] for t, ps in found["shards"].items()}


def _params(n_per_type, seed, image_size, shard_size, types) -> dict:
    """The arguments a DONE marker records (in JSON form, to compare with what it read back)."""
    return {
        "n_per_type": n_per_type,
        "seed": seed,
        "image_size": list(image_size),
        "shard_size": shard_size,
        "types": list(types),
    }


def _read_done(out: Path) -> dict | None:
    try:
        return json.loads((out / DONE).read_text())
    except (OSError, ValueError):
        return None
