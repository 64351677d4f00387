"""ocr_augment: make OCR samples harder (handwriting, occlusion, deformed type, blur) and move their boxes along.

    python -m mimovl.curate ocr_augment --input 'data/ocr-*.tar' --out 'cur/ocr/ocr-%06d.tar' [--seed 0] \
        [--config ocr.yaml] [--p-handwriting 0.3] [--p-elastic 0.3] ...

Works on samples with meta["words"] = [{"text", "box": [x1, y1, x2, y2]}] (absolute pixels of their one
image); others pass unchanged. Per sample, each augmentation is drawn with its probability, in this order:
  1. handwriting: each word is painted over with the colour around its box and written again, inside its
     box, by hand-like rendering: PIL's default font (no handwriting font ships offline) character by
     character with jittered size, baseline and spacing, a random pen thickness and colour, then slanted
     (sheared) as a whole. The word's box becomes the box of the new ink. Words under
     handwriting_min_height (12) pixels tall stay as they are: smaller handwriting is not legible.
  2. occlusion: a rectangle of one random colour over the page (before the page is deformed, so it deforms
     with it), placed by torchvision's v2.RandomErasing sampler (area share and aspect ratio) and redrawn
     until it covers at most max_word_covered of every word box: a word may be hidden in part, never
     whole, or its text would no longer be readable. (v2 rather than timm's RandomErasing: timm's works on
     normalised batches and knows nothing of boxes.)
  3. deformation and blur, one torchvision.transforms.v2 call: RandomPerspective, ElasticTransform and
     GaussianBlur on the image, the boxes (tv_tensors.BoundingBoxes) and a tv_tensors.Mask of box regions
     (words packed into channels so that none overlaps another in its channel). A word's new box is the
     union of v2's own box (its corners moved: exact for perspective, approximate for elastic, as torchvision
     documents) and the bounding box of its region after the same warp (nearest sampling, so every pixel of
     the warped word lies in it). A draw that pushes a word off the image is redrawn (`attempts` times, then
     no deformation).
Boxes are written as integers [x1, y1, x2, y2] with x2, y2 one past the last pixel (enclosing in either
convention), into meta["words"][i]["box"] and wherever a box appears as "[x1, y1, x2, y2]" in the answers or a
string meta["answer"] (a box not of a word is warped the same way). Randomness: random.Random and torch's
generator seeded by (seed, key), so output is deterministic.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mimovl.curate.runner import Item, Report, Step
from mimovl.data.stream import stable_seed


@dataclass
class OcrAugmentConfig:
    """Probabilities and strengths of the OCR augmentations; a YAML --config uses these names as keys."""

    seed: int = field(default=0, metadata={"help": "seed of every random choice (with the sample key)"})
    p_handwriting: float = field(default=0.3, metadata={"help": "chance to rewrite the words by hand"})
    handwriting_min_height: int = field(default=12, metadata={"help": "smallest word box (pixels tall) rewritten "
                                                                      "by hand: smaller writing is not legible"})
    p_occlusion: float = field(default=0.3, metadata={"help": "chance of an occluding rectangle"})
    occlusion_min_area: float = field(default=0.01, metadata={"help": "smallest occluder, share of the image"})
    occlusion_max_area: float = field(default=0.06, metadata={"help": "largest occluder, share of the image"})
    max_word_covered: float = field(default=0.5, metadata={"help": "largest share of a word box it may cover"})
    p_perspective: float = field(default=0.5, metadata={"help": "chance of a perspective warp"})
    distortion_scale: float = field(default=0.25, metadata={"help": "RandomPerspective distortion_scale"})
    p_elastic: float = field(default=0.3, metadata={"help": "chance of an elastic deformation"})
    elastic_alpha: float = field(default=30.0, metadata={"help": "ElasticTransform alpha (strength)"})
    elastic_sigma: float = field(default=5.0, metadata={"help": "ElasticTransform sigma (smoothness)"})
    p_blur: float = field(default=0.5, metadata={"help": "chance of a Gaussian blur"})
    blur_sigma_min: float = field(default=0.3, metadata={"help": "smallest blur sigma (pixels)"})
    blur_sigma_max: float = field(default=1.2, metadata={"help": "largest blur sigma (pixels)"})
    attempts: int = field(default=5, metadata={"help": "draws of an occluder or a warp before giving it up"})


@dataclass
class Augmented:
    """The result of `augment`: the image, one integer box per input box, the carried ink masks (or None), and
    the names of the augmentations applied."""

    image: Image.Image
    boxes: list[list[int]]
    ink: torch.Tensor | None
    applied: list[str]


def augment(image: Image.Image, boxes: list, texts: list[str], cfg: OcrAugmentConfig, seed: int,
            ink: torch.Tensor | None = None) -> Augmented:
    """Augment one OCR image. `boxes[:len(texts)]` are words (handwriting rewrites them), any further boxes
    are only warped. `ink`: optional (K, H, W) masks of the first K boxes' ink, carried through the same
    transforms (what tests check the boxes against); handwriting replaces a rewritten word's ink."""
    rng = random.Random(seed)
    width, height = image.size
    boxes = [[float(v) for v in b] for b in boxes]
    applied = []
    if texts and rng.random() < cfg.p_handwriting:
        written, new_boxes, new_ink = handwrite(image, boxes[: len(texts)], texts, rng, cfg.handwriting_min_height)
        if new_ink:  # else every word was too small to write by hand
            image, boxes[: len(texts)] = written, new_boxes
            if ink is not None:
                ink = ink.clone()
                for k, mask in new_ink.items():
                    if k < len(ink):
                        ink[k] = mask
            applied.append("handwriting")
    with torch.random.fork_rng(devices=[]):  # v2 draws from torch's global CPU generator
        torch.default_generator.manual_seed(rng.getrandbits(63))
        pixels = F.pil_to_tensor(image)
        background = _background(pixels)
        if rng.random() < cfg.p_occlusion:
            pixels, done = _occlude(pixels, boxes, cfg, rng)
            applied += ["occlusion"] if done else []
        chosen = [name for name, p in (("perspective", cfg.p_perspective), ("elastic", cfg.p_elastic),
                                       ("blur", cfg.p_blur)) if rng.random() < p]
        pixels, boxes, ink, warped = _warp(pixels, boxes, ink, chosen, cfg, background, (height, width))
        applied += warped
    out = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    return Augmented(out, [_int_box(b, width, height) for b in boxes], ink, applied)


def _warp(pixels, boxes, ink, chosen, cfg, background, size):
    """Apply the chosen v2 transforms to image, boxes, box regions and ink; redraw a warp that pushes a word
    off the image. Returns (pixels, boxes, ink, names applied)."""
    if not chosen:
        return pixels, boxes, ink, []
    fill = {tv_tensors.Image: background, tv_tensors.Mask: 0}
    transforms = {
        "perspective": v2.RandomPerspective(cfg.distortion_scale, p=1.0, fill=fill),
        "elastic": SeparableElastic(cfg.elastic_alpha, cfg.elastic_sigma, fill=fill),
        "blur": v2.GaussianBlur(2 * math.ceil(3 * cfg.blur_sigma_max) + 1, (cfg.blur_sigma_min, cfg.blur_sigma_max)),
    }
    geometric = [n for n in chosen if n != "blur"]
    regions, where = _regions(boxes, *size)
    inputs = [tv_tensors.Image(pixels), tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size),
              tv_tensors.Mask(torch.from_numpy(regions))]
    if ink is not None:
        inputs.append(tv_tensors.Mask(ink.to(torch.uint8)))
    before = _region_boxes(regions, where)
    for _ in range(cfg.attempts if geometric else 1):
        outputs = v2.Compose([transforms[n] for n in chosen])(*inputs)
        if not geometric:
            return outputs[0].as_subclass(torch.Tensor), boxes, ink, chosen
        after = _region_boxes(outputs[2].numpy(), where)
        if all(_still_inside(a, b, size) for a, b in zip(after, before)):
            moved = outputs[1].tolist()
            new_boxes = [[min(m[0], a[0]), min(m[1], a[1]), max(m[2], a[2]), max(m[3], a[3])]
                         for m, a in zip(moved, after)]
            new_ink = outputs[3].as_subclass(torch.Tensor).bool() if ink is not None else None
            return outputs[0].as_subclass(torch.Tensor), new_boxes, new_ink, chosen
    if "blur" in chosen:  # no warp kept a word on the image: blur alone
        blurred = transforms["blur"](tv_tensors.Image(pixels)).as_subclass(torch.Tensor)
        return blurred, boxes, ink, ["blur"]
    return pixels, boxes, ink, []


class SeparableElastic(v2.ElasticTransform):
    """v2.ElasticTransform with its displacement field blurred by two 1-D passes of the same Gaussian (same
    field distribution): torchvision blurs with a 2-D kernel, (8 sigma + 1)^2 multiply-adds a pixel, ~20 ms
    for a 224x160 image at sigma 5 on one core and quadratic in sigma."""

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        fields = []
        for axis, extent in ((0, width), (1, height)):
            noise = torch.rand(1, 1, height, width) * 2 - 1
            if self.sigma[axis] > 0:
                noise = _blur(noise, self.sigma[axis])
            fields.append(noise * self.alpha[axis] / extent)
        return {"displacement": torch.cat(fields, 1).permute(0, 2, 3, 1)}  # 1 x H x W x 2, as torchvision's


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (1, 1, H, W) field, kernel and reflect padding as torchvision's ElasticTransform."""
    size = int(8 * sigma + 1) | 1  # odd
    half = size // 2
    kernel = torch.exp(-0.5 * (torch.linspace(-half, half, size) / sigma) ** 2)
    kernel /= kernel.sum()
    x = torch.nn.functional.pad(x, [half, half, half, half], mode="reflect")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, size))
    return torch.nn.functional.conv2d(x, kernel.view(1, 1, size, 1))


def _pixel_span(box, width, height) -> tuple[int, int, int, int]:
    """Inclusive pixel ranges a box covers, generously (its right/bottom edge pixel included)."""
    x1, y1, x2, y2 = box
    x1, y1 = min(max(math.floor(x1), 0), width - 1), min(max(math.floor(y1), 0), height - 1)
    x2, y2 = min(max(math.ceil(x2), x1), width - 1), min(max(math.ceil(y2), y1), height - 1)
    return x1, y1, x2, y2


def _regions(boxes, height, width) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(C, H, W) uint8 label channels of the box rectangles, no two overlapping in a channel (<= 255 a
    channel), and each box's (channel, label)."""
    channels: list[np.ndarray] = []
    used: list[int] = []
    where = []
    for box in boxes:
        x1, y1, x2, y2 = _pixel_span(box, width, height)
        for c, ch in enumerate(channels):
            if used[c] < 255 and not ch[y1:y2 + 1, x1:x2 + 1].any():
                break
        else:
            channels.append(np.zeros((height, width), np.uint8))
            used.append(0)
            c = len(channels) - 1
        used[c] += 1
        channels[c][y1:y2 + 1, x1:x2 + 1] = used[c]
        where.append((c, used[c]))
    return np.stack(channels) if channels else np.zeros((1, height, width), np.uint8), where


def _region_boxes(regions: np.ndarray, where) -> list[list[int] | None]:
    """[x1, y1, x2 + 1, y2 + 1] of each box's region pixels (None when none is left)."""
    found = {}
    for c in {c for c, _ in where}:
        ys, xs = np.nonzero(regions[c])
        labels = regions[c][ys, xs]
        for label in np.unique(labels):
            sel = labels == label
            found[(c, int(label))] = [int(xs[sel].min()), int(ys[sel].min()), int(xs[sel].max()) + 1,
                                      int(ys[sel].max()) + 1]
    return [found.get(w) for w in where]


def _still_inside(after, before, size) -> bool:
    """A warped region is kept whole: not empty, and off the image border unless it touched it before."""
    if after is None:
        return False
    height, width = size

    def touched(b) -> bool:
        return b[0] <= 0 or b[1] <= 0 or b[2] >= width or b[3] >= height

    return touched(before) or not touched(after)


def _int_box(box, width, height) -> list[int]:
    x1, y1, x2, y2 = box
    return [max(0, math.floor(x1)), max(0, math.floor(y1)), min(width, math.ceil(x2)), min(height, math.ceil(y2))]


def _background(pixels: torch.Tensor) -> list[int]:
    """The median colour of the image border: the paper around the text."""
    border = torch.cat([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], dim=1)
    return [int(v) for v in border.median(dim=1).values]


def _occlude(pixels: torch.Tensor, boxes, cfg, rng) -> tuple[torch.Tensor, bool]:
    """Erase one rectangle covering at most cfg.max_word_covered of every box (None found: unchanged)."""
    colour = [rng.randrange(256) for _ in range(3)]
    eraser = v2.RandomErasing(p=1.0, scale=(cfg.occlusion_min_area, cfg.occlusion_max_area), value=colour)
    height, width = pixels.shape[-2:]
    for _ in range(cfg.attempts):
        params = eraser.make_params([tv_tensors.Image(pixels)])
        i, j, h, w = params["i"], params["j"], params["h"], params["w"]
        if h >= height or w >= width:  # the sampler found no fitting shape
            continue
        if all(_covered(b, (j, i, j + w, i + h)) <= cfg.max_word_covered for b in boxes):
            return F.erase(pixels, i, j, h, w, params["v"].to(pixels.dtype)), True
    return pixels, False


def _covered(box, rect) -> float:
    """Share of `box`'s area inside `rect` (both x1, y1, x2, y2)."""
    ix = max(0.0, min(box[2], rect[2]) - max(box[0], rect[0]))
    iy = max(0.0, min(box[3], rect[3]) - max(box[1], rect[1]))
    area = max(box[2] - box[0], 1.0) * max(box[3] - box[1], 1.0)
    return ix * iy / area


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def handwrite(image: Image.Image, boxes, texts, rng: random.Random, min_height: int = 12):
    """Rewrite each word by hand inside its box (see the module docstring).

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


_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")  # "[x1, y1, x2, y2]"


def _text_boxes(text: str) -> list[tuple[float, ...]]:
    return [tuple(float(v) for v in m.groups()) for m in _BOX.finditer(text)]


def _rewrite_boxes(text: str, mapping: dict) -> str:
    def swap(m):
        new = mapping.get(tuple(float(v) for v in m.groups()))
        return json.dumps(new) if new is not None else m.group(0)

    return _BOX.sub(swap, text)


class OcrAugment(Step):
    name = "ocr_augment"
    # Small per-sample tensors: a second thread only waits (measured on 2 shared cores: 18 ms a sample with one
    # thread, 10x that with two). Parallelise over shards instead.
    torch_threads = 1

    def __init__(self, config: OcrAugmentConfig | None = None, types=None):
        super().__init__(types)
        self.config = config or OcrAugmentConfig()
        self.applied: Counter = Counter()
        self.unchanged: Counter = Counter()

    def params(self) -> dict:
        return asdict(self.config)

    def process_one(self, item: Item, report: Report) -> dict | None:
        meta, images = item.header["meta"], item.sample["images"]
        words = meta.get("words")
        if not isinstance(words, list) or not words or not all(_is_box(w.get("box")) for w in words):
            self.unchanged["no_word_boxes"] += 1
            return item.record()
        if len(images) != 1:
            self.unchanged["not_one_image"] += 1
            return item.record()
        word_boxes = [tuple(float(v) for v in w["box"]) for w in words]
        texts = [str(w.get("text", "")) for w in words]
        answers = [p["text"] for m in item.header["messages"] if m["role"] == "assistant" for p in m["content"]
                   if p["type"] == "text"]
        if isinstance(meta.get("answer"), str):
            answers.append(meta["answer"])
        extra = list(dict.fromkeys(b for text in answers for b in _text_boxes(text) if b not in word_boxes))
        result = augment(images[0], word_boxes + extra, texts, self.config,
                         stable_seed("ocr_augment", self.config.seed, item.key))
        self.applied.update(result.applied)
        if not result.applied:
            self.unchanged["nothing_drawn"] += 1
            return item.record()
        mapping = {}
        for old, new in reversed(list(zip(word_boxes + extra, result.boxes))):
            mapping[old] = new  # a box given twice takes the first (a word's) new box
        new_meta = {**meta, "words": [{**w, "box": b} for w, b in zip(words, result.boxes)]}
        if isinstance(meta.get("answer"), str):
            new_meta["answer"] = _rewrite_boxes(meta["answer"], mapping)
        messages = [
            {**m, "content": [{**p, "text": _rewrite_boxes(p["text"], mapping)} if p["type"] == "text" else p
                              for p in m["content"]]} if m["role"] == "assistant" else m
            for m in item.header["messages"]
        ]
        report.modified += 1
        return item.updated(messages=messages, meta=new_meta, images={0: result.image})

    def finish(self) -> dict:
        return {"applied": dict(sorted(self.applied.items())), "unchanged": dict(sorted(self.unchanged.items()))}


def _is_box(box) -> bool:
    return (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            and box[2] >= box[0] and box[3] >= box[1])
