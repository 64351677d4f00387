"""Perceptual image hashes and an index that finds stored hashes within a Hamming distance.

    h = image_phash(img)                   # imagehash.phash: 64 bits, the 8x8 lowest DCT frequencies vs their median
    index = PhashIndex(max_distance=10)
    index.add(h, ("key", 0))
    index.near(h2)                         # [(distance, value), ...], nearest first

The index is multi-index hashing (Norouzi, Punjani and Fleet, CVPR 2012), written here because no maintained
Python package offers it for 64-bit codes. The bits are cut into `bands` contiguous bands; each band has a
dict from its value to the ids stored with that value. Two hashes within distance d differ in at most
floor(d / bands) bits of some band (pigeonhole), so a query looks up, in every band, each value within that
radius of its own and verifies the full distance of the candidates it finds: recall is exact, and a query
touches ~bands * probes * n / 2**(64 / bands) stored hashes instead of all n.
Default bands: d + 1 (radius 0, one exact lookup per band) while that leaves bands of at least 16 bits
(d <= 3); beyond that 4 bands of 16 bits probed within radius d // 4 (d = 10: 4 x 137 lookups), so a
bucket holds ~n / 65536 hashes however large d is.

DEFAULT_MAX_DISTANCE = 10, from a measurement (200 random images, 160x128: shapes on a plain ground and
smooth colour textures; tests/test_curate.py plants the same kinds):
  * distinct images: smallest distance between any two 16 (a 0.1% quantile of 18);
  * resized to 0.8x: at most 6; JPEG at quality 60: at most 8 (both always caught from 8 up);
  * cropped 3-5% (centred): shapes at most 10; smooth textures reach 14-16 (caught 72-90% at 10), phash
    follows low frequencies, which a crop shifts.
10 keeps a margin of 6 below the closest distinct pair while catching resizes, re-encodes and most crops;
common tools settle near it too (imagededup's default threshold is 10). phash distances are even (each hash
has 32 ones), so 10 and 11 act alike. Sparse synthetic scenes (a few shapes on white, mimovl.data.synthetic)
are not distinct to phash: different scenes can lie within 2-8 of each other.
"""

from __future__ import annotations

from itertools import combinations

import imagehash
from PIL import Image

DEFAULT_MAX_DISTANCE = 10
BITS = 64


def image_phash(img: Image.Image) -> int:
    """The 64-bit perceptual hash of an image, as an int."""
    return int(str(imagehash.phash(img)), 16)


class PhashIndex:
    """Hashes with values, searchable by Hamming distance up to `max_distance` (see the module docstring)."""

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE, bands: int | None = None, bits: int = BITS):
        if not 0 <= max_distance < bits:
            raise ValueError(f"max_distance must be in [0, {bits}), got {max_distance}")
        bands = bands or (max_distance + 1 if max_distance + 1 <= 4 else 4)
        if not 1 <= bands <= bits:
            raise ValueError(f"bands must be in [1, {bits}], got {bands}")
        self.max_distance, self.bits = max_distance, bits
        self.radius = max_distance // bands  # pigeonhole: some band differs in at most this many bits
        widths = [bits // bands + (i < bits % bands) for i in range(bands)]
        shifts = [sum(widths[:i]) for i in range(bands)]
        self._bands = [(shift, (1 << width) - 1) for shift, width in zip(shifts, widths)]
        self._probes = [_flips(width, self.radius) for width in widths]
        self._buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
        self._hashes: list[int] = []
        self._values: list = []

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, h: int, value=None) -> None:
        """Store hash `h` with `value` (returned by `near`)."""
        i = len(self._hashes)
        self._hashes.append(h)
        self._values.append(value)
        for (shift, mask), bucket in zip(self._bands, self._buckets):
            bucket.setdefault((h >> shift) & mask, []).append(i)

    def near(self, h: int, max_distance: int | None = None) -> list[tuple[int, object]]:
        """(distance, value) of every stored hash within `max_distance` (default: the index's) of `h`,
        nearest first, ties in the order they were added."""
        d = self.max_distance if max_distance is None else max_distance
        if d > self.max_distance:
            raise ValueError(f"this index finds distances up to {self.max_distance}, not {d}")
        candidates: set[int] = set()
        for (shift, mask), probes, bucket in zip(self._bands, self._probes, self._buckets):
            v = (h >> shift) & mask
            for flip in probes:
                ids = bucket.get(v ^ flip)
                if ids:
                    candidates.update(ids)
        hits = sorted((dist, i) for i in candidates if (dist := (h ^ self._hashes[i]).bit_count()) <= d)
        return [(dist, self._values[i]) for dist, i in hits]


def _flips(width: int, radius: int) -> list[int]:
    """Every `width`-bit mask with at most `radius` ones (0 first)."""
    return [sum(1 << b for b in bits) for r in range(radius + 1) for bits in combinations(range(width), r)]
