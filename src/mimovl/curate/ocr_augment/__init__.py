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

Modules:
  pipeline     OcrAugmentConfig, and augment: one image through the augmentations above, in order
  handwriting  words rewritten in a jittered, slanted hand
  transforms   the two transforms torchvision lacks: a separable elastic warp and a box-aware occluder
  regions      box geometry: pixel spans, box regions as mask channels, the boxes of warped regions
  step         the OcrAugment curate step: samples in, boxes rewritten in meta and answers
"""

from mimovl.curate.ocr_augment.handwriting import handwrite
from mimovl.curate.ocr_augment.pipeline import Augmented, OcrAugmentConfig, augment
from mimovl.curate.ocr_augment.step import OcrAugment
from mimovl.curate.ocr_augment.transforms import SeparableElastic

__all__ = ["Augmented", "OcrAugment", "OcrAugmentConfig", "SeparableElastic", "augment", "handwrite"]
