"""Converters from public dataset layouts to the project's shards (schema: mimovl.data.schema).

    python -m mimovl.data.convert llava --input llava_v1_5_mix665k.json --media-root data/ \\
        --out 'shards/llava-%06d.tar'

    from mimovl.data.convert import convert_to_shards
    shards, counts = convert_to_shards("refcoco", "refs.json", "coco/train2014", "out/refcoco-%06d.tar")
    print(counts.summary())      # read 10, wrote 23, skipped 1 (image_missing 1)

One module per format (its docstring gives the exact layout it accepts); CONVERTERS names them:
    llava       LLaVA conversations (single / multi-image, multi-turn)  -> qa
    refcoco     RefCOCO referring boxes                                  -> grounding (grounding_box)
    screenspot  ScreenSpot GUI grounding                                 -> gui (grounding_point)
    charades    Charades-STA moments + mp4 videos                        -> video (temporal_grounding)
    mathvista   MathVista / Geometry3K visual math                       -> qa (math / multiple_choice)
    obelics     OBELICS / MMC4 interleaved documents                     -> interleaved
    preference  prompt + chosen / rejected pairs                         -> preference
Each converter is `convert(input, media_root, counts, **options) -> Iterator[schema sample]`: it skips and
counts bad entries (mimovl.data.convert.common.Counts), never stopping on one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from mimovl.data.convert import charades, llava, mathvista, obelics, preference, refcoco, screenspot
from mimovl.data.convert.common import Counts
from mimovl.data.shards import write_shards

Converter = Callable[..., Iterator[dict]]
CONVERTERS: dict[str, Converter] = {
    "llava": llava.convert,
    "refcoco": refcoco.convert,
    "screenspot": screenspot.convert,
    "charades": charades.convert,
    "mathvista": mathvista.convert,
    "obelics": obelics.convert,
    "preference": preference.convert,
}


def convert_to_shards(
    fmt: str,
    path: str | Path,
    media_root: str | Path,
    pattern: str,
    maxcount: int = 1000,
    image_ext: str = "png",
    progress: bool = False,
    **options,
) -> tuple[list[str], Counts]:
    """Convert `path` (format `fmt`, a key of CONVERTERS) to shards named `pattern % i`.

    `options` go to the converter (charades: fps, max_frames; screenspot: box_format). Images are stored as
    `image_ext` ("png": lossless; "jpg": smaller). Returns the shard paths and the counts.
    """
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(CONVERTERS)}")
    counts = Counts()
    samples = CONVERTERS[fmt](path, media_root, counts, **options)
    shards = write_shards(samples, pattern, maxcount=maxcount, image_ext=image_ext, progress=progress)
    return shards, counts
