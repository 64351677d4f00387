"""One OCR image through the augmentations (see the package docstring): their config, their order, and the
torchvision v2 warp that carries boxes, box regions and ink along.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mimovl.curate.ocr_augment.handwriting import handwrite
from mimovl.curate.ocr_augment.regions import _int_box, _region_boxes, _regions, _still_inside
from mimovl.curate.ocr_augment.transforms import SeparableElastic, _occlude


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


def _background(pixels: torch.Tensor) -> list[int]:
    """The median colour of the image border: the paper around the text."""
    border = torch.cat([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], dim=1)
    return [int(v) for v in border.median(dim=1).values]
