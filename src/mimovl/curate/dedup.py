"""dedup: drop a sample when one of its images is a near-duplicate (phash) of an image already kept.

    python -m mimovl.curate dedup --input 'data/cap-*.tar' --out 'cur/dedup/cap-%06d.tar' [--max-distance 10]

Samples are seen in shard order; the first of a group of near-duplicates is kept, and only kept samples'
images enter the index. Images within one sample are not compared with each other; videos and samples
without images pass unchanged. Report entries: {key, shard, reason: "near_duplicate", image (index in this
sample), duplicate_of (kept key), duplicate_image, distance}.
"""

from __future__ import annotations

from mimovl.curate.phash import DEFAULT_MAX_DISTANCE, PhashIndex, image_phash
from mimovl.curate.runner import Item, Report, Step


class Dedup(Step):
    name = "dedup"

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE, types=None):
        super().__init__(types)
        self.max_distance = max_distance
        self.index = PhashIndex(max_distance)
        self.no_image = 0

    def params(self) -> dict:
        return {"max_distance": self.max_distance}

    def process_one(self, item: Item, report: Report) -> dict | None:
        hashes = [image_phash(img) for img in item.sample["images"]]
        if not hashes:
            self.no_image += 1
        for i, h in enumerate(hashes):
            hits = self.index.near(h)
            if hits:
                distance, (key, j) = hits[0]
                report.remove(item, "near_duplicate", image=i, duplicate_of=key, duplicate_image=j,
                              distance=distance)
                return None
        for i, h in enumerate(hashes):
            self.index.add(h, (item.key, i))
        return item.record()

    def finish(self) -> dict:
        return {"images_indexed": len(self.index), "samples_without_images": self.no_image}
