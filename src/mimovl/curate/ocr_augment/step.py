"""The ocr_augment curate step: augments samples with word boxes and one image, and rewrites their boxes in
meta["words"], in the answers and in a string meta["answer"].
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict

from mimovl.curate.ocr_augment.pipeline import OcrAugmentConfig, augment
from mimovl.curate.runner import Item, Report, Step
from mimovl.data.stream import stable_seed

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
