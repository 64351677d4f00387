"""The synthetic sample makers, one per type (qa, reasoning and preference with several variants), and
make_sample, which picks the maker and seeds its random stream.
"""

from __future__ import annotations

import json
import random
from collections import Counter

from PIL import Image, ImageDraw

from mimovl.data.schema import chat, document, image, text, video
from mimovl.data.synthetic.draw import (
    BUTTONS,
    CELL,
    COLORS,
    NUMBER_WORDS,
    SHAPES,
    WORDS,
    _big_shape,
    _describe,
    _distinct_kinds,
    _font,
    _kinds,
    _mmss,
    _plural,
    _scene,
    _text_image,
)


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
