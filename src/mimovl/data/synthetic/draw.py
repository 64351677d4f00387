"""The synthetic data's vocabulary and drawing: scenes of shapes in a 28-pixel grid, lines of text, big
shapes for preference pictures, and the phrases that describe them.
"""

from __future__ import annotations

import random
from collections import Counter
from functools import cache

from PIL import Image, ImageDraw, ImageFont

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 190, 20)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("cat", "dog", "sun", "map", "box", "tree", "book", "milk", "open", "stop", "exit", "park")
BUTTONS = ("OK", "Cancel", "Save", "Open", "Close", "Next", "Back", "Help")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CELL = 28  # grid cell: one shape per cell, and the ViT patch (14) times the 2x2 merge


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


def _big_shape(draw: ImageDraw.ImageDraw, rng: random.Random, shape: str, color: str, area: list[int]) -> dict:
    """Draw a shape filling most of `area` [x1, y1, x2, y2] (exclusive); return its object record."""
    x1, y1, x2, y2 = area
    side = rng.randint((x2 - x1) * 3 // 4, x2 - x1 - 1)
    x, y = rng.randint(x1, x2 - 1 - side), rng.randint(y1, y2 - 1 - side)
    _draw_shape(draw, shape, color, [x, y, x + side, y + side])
    return {"color": color, "shape": shape, "box": [x, y, x + side, y + side]}
