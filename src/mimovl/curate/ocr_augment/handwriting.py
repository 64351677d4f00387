"""Handwriting for OCR augmentation: each word painted over and written again, inside its box, in a
jittered, slanted hand (PIL's default font, character by character).
"""

from __future__ import annotations

import random
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mimovl.curate.ocr_augment.regions import _pixel_span


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def handwrite(image: Image.Image, boxes, texts, rng: random.Random, min_height: int = 12):
    """Rewrite each word by hand inside its box (see the package docstring).

    Returns (image, new boxes, {word index: (H, W) bool ink mask}) for the words rewritten; a word whose box is
    under `min_height` pixels tall or whose text is blank keeps its box and pixels."""
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    height, width = pixels.shape[:2]
    new_boxes, inks = [list(b) for b in boxes], {}
    pen = np.array([rng.randint(10, 60), rng.randint(10, 60), rng.randint(30, 110)], np.float32)
    for k, (box, text) in enumerate(zip(boxes, texts)):
        x1, y1, x2, y2 = _pixel_span(box, width, height)
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if bh < min_height or not text.strip():
            continue
        ring = np.concatenate([pixels[max(y1 - 1, 0), x1:x2 + 1], pixels[min(y2 + 1, height - 1), x1:x2 + 1],
                               pixels[y1:y2 + 1, max(x1 - 1, 0)], pixels[y1:y2 + 1, min(x2 + 1, width - 1)]])
        pixels[y1:y2 + 1, x1:x2 + 1] = np.median(ring, axis=0)
        alpha = _hand_word(text.strip(), bh, rng)
        scale = min(bw / alpha.shape[1], bh / alpha.shape[0])
        size = (max(1, round(alpha.shape[1] * scale)), max(1, round(alpha.shape[0] * scale)))
        alpha = np.asarray(Image.fromarray(alpha).resize(size, Image.BILINEAR), np.float32) / 255
        ox = x1 + rng.randint(0, bw - size[0])
        oy = y1 + rng.randint(0, bh - size[1])
        region = pixels[oy:oy + size[1], ox:ox + size[0]]
        region[:] = region * (1 - alpha[..., None]) + pen * alpha[..., None]
        ys, xs = np.nonzero(alpha > 0)
        if len(xs) == 0:
            continue
        new_boxes[k] = [ox + int(xs.min()), oy + int(ys.min()), ox + int(xs.max()) + 1, oy + int(ys.max()) + 1]
        mask = np.zeros((height, width), bool)
        mask[oy:oy + size[1], ox:ox + size[0]] = alpha > 0.25
        inks[k] = torch.from_numpy(mask)
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8)), new_boxes, inks


def _hand_word(text: str, height: int, rng: random.Random) -> np.ndarray:
    """A word's ink (uint8 alpha, cropped to the ink) in a jittered, slanted hand."""
    size = max(10, round(height * 1.2))
    canvas = Image.new("L", (size * (len(text) + 4), size * 3), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = rng.choice((0, 0, 1))
    x, baseline = float(size), 2.0 * size
    for ch in text:
        font = _font(max(6, round(size * rng.uniform(0.85, 1.15))))
        y = baseline + rng.uniform(-0.08, 0.08) * size
        draw.text((x, y), ch, fill=255, font=font, anchor="ls", stroke_width=stroke, stroke_fill=255)
        x += font.getlength(ch) * rng.uniform(0.88, 1.05) + stroke
    slant = rng.uniform(0.15, 0.35)  # shear: the tops of letters lean right
    canvas = canvas.transform(canvas.size, Image.AFFINE, (1, slant, -slant * baseline, 0, 1, 0), Image.BILINEAR)
    canvas = canvas.rotate(rng.uniform(-3, 3), Image.BILINEAR, center=(x / 2, baseline))
    bbox = canvas.getbbox()
    return np.asarray(canvas.crop(bbox) if bbox else canvas)
