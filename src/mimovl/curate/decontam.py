"""decontam: drop training samples with an image within a phash distance of any evaluation image.

    python -m mimovl.curate decontam --input 'data/*.tar' --out 'cur/decontam/train-%06d.tar' \
        --eval 'bench/*.tar' [--eval bench_images/] [--max-distance 10]

--eval takes shard patterns (every image of every sample; the key names the match) or directories of image
files (searched recursively; the path relative to the directory names the match). Report entries:
{key, shard, reason: "eval_overlap", image, eval_key, eval_image, eval_source, distance}. Video frames are
not compared.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PIL import Image

from mimovl.curate.phash import DEFAULT_MAX_DISTANCE, PhashIndex, image_phash
from mimovl.curate.runner import Item, Report, Step, expand_inputs, read_items
from mimovl.errors import UsageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class Decontam(Step):
    name = "decontam"

    def __init__(self, eval_sources: list[str], max_distance: int = DEFAULT_MAX_DISTANCE, types=None):
        super().__init__(types)
        if not eval_sources:
            raise UsageError("decontam needs --eval: evaluation shards or image directories")
        self.max_distance = max_distance
        self.dirs = [str(s) for s in eval_sources if os.path.isdir(s)]
        patterns = [str(s) for s in eval_sources if not os.path.isdir(s)]
        self.shards = expand_inputs(patterns, "--eval") if patterns else []
        self.dir_files = sorted(str(p) for d in self.dirs for p in Path(d).rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        self.index = PhashIndex(max_distance)
        self.eval_skipped = 0

    def params(self) -> dict:
        return {"max_distance": self.max_distance}

    def input_files(self) -> list[str]:
        return self.shards + self.dir_files

    def prepare(self, read) -> None:
        unreadable = Report()
        for item in read_items(self.shards, unreadable):
            for j, img in enumerate(item.sample["images"]):
                self.index.add(image_phash(img), {"eval_key": item.key, "eval_image": j, "eval_source": item.shard})
        self.eval_skipped += len(unreadable.removed)
        for d in self.dirs:
            for path in (p for p in self.dir_files if Path(p).is_relative_to(d)):
                try:
                    with Image.open(path) as img:
                        h = image_phash(img.convert("RGB"))
                except OSError as exn:
                    log.warning("eval image %s skipped: %s", path, exn)
                    self.eval_skipped += 1
                    continue
                self.index.add(h, {"eval_key": os.path.relpath(path, d), "eval_image": 0, "eval_source": d})

    def process_one(self, item: Item, report: Report) -> dict | None:
        for i, img in enumerate(item.sample["images"]):
            hits = self.index.near(image_phash(img))
            if hits:
                distance, match = hits[0]
                report.remove(item, "eval_overlap", image=i, **match, distance=distance)
                return None
        return item.record()

    def finish(self) -> dict:
        return {"eval_images": len(self.index), "eval_images_unreadable": self.eval_skipped}
