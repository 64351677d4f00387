"""One source of the stream in one slot of the split, with its position as state: the slot's shards in order ->
their raw samples, read on from a byte offset (`mimovl.data.tars`) -> a shuffle buffer of raw samples -> decoded
schema samples.

    source = SourceStream("caption", urls, slot=0, nslots=2, seed=0, shuffle_buffer=200, resample=True,
                          counter=SkipCounter(), video_fps=2.0, max_frames=256)
    sample = next(source)          # sample["origin"] == ("caption", shard, byte offset): where it can be read again
    state = source.state_dict()    # a fresh SourceStream(...) given load_state_dict(state) goes on identically

webdataset's ResampledShards and shuffle buffer keep their place in generator locals, which nothing can save. Here
they are objects making the same `random.Random` calls in the same order (so the samples come in webdataset's
order), and their state is small: the generators' random states, the shard being read and the byte offset to
read it on from, and the shard and offset of every raw sample in the shuffle buffer. Restoring re-reads those
buffered samples one by one (their bytes only: they are decoded when they leave the buffer, as before) and
nothing else; its cost does not grow with the samples read before.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

import webdataset as wds

from mimovl.data.decode import CorruptSample, decode_sample
from mimovl.data.tars import read_at, read_shard
from mimovl.errors import UsageError

# The buffer webdataset's shuffle fills before its first yield (`wds.shuffle`'s `initial`), at most its size.
SHUFFLE_INITIAL = 100


def stable_seed(*parts) -> int:
    """A 64-bit seed from any printable parts; unlike hash(), the same in every process."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


class ShardOrder:
    """The shards one slot reads, in order. resample=True: forever, each drawn at random from the slot's own
    shards, or from all of them when there are fewer than slots (webdataset's deterministic ResampledShards with
    worker seed 0); resample=False: each once, in a seeded order shared by all slots, every nslots-th shard from
    the slot's own place on (disjoint slices)."""

    def __init__(self, urls: list[str], seed: int, shard_seed: int, slot: int, nslots: int, resample: bool):
        if resample:
            self.urls = urls[slot::nslots] if len(urls) >= nslots else urls
            self.rng = random.Random(wds.utils.make_seed(0, 0, shard_seed))
        else:
            order = list(urls)
            random.Random(seed).shuffle(order)
            self.urls, self.rng = order[slot::nslots], None
        self.taken = 0  # shards handed out

    def next(self) -> str | None:
        """The next shard, or None when a single pass is through."""
        if self.rng is not None:
            url = self.urls[self.rng.randint(0, len(self.urls) - 1)]
        elif self.taken == len(self.urls):
            return None
        else:
            url = self.urls[self.taken]
        self.taken += 1
        return url

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate() if self.rng else None, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        if self.rng is not None:
            self.rng.setstate(state["rng"])
        self.taken = state["taken"]


class StallGuard:
    """Fails a source that keeps opening shards without yielding one good sample.

    A resampled source of empty or all-corrupt shards would otherwise spin forever without a word.
    """

    def __init__(self, name: str, limit: int):
        self.name, self.limit, self.opened = name, limit, 0

    def opening(self) -> None:
        self.opened += 1
        if self.opened > self.limit:
            raise RuntimeError(f"source {self.name!r}: opened {self.opened - 1} shards in a row without one good "
                               "sample (empty shards, or only corrupt samples?)")


class Shuffle:
    """webdataset's shuffle buffer (`wds.shuffle(size)`) as an object: it yields once min(size, SHUFFLE_INITIAL)
    samples are held, takes two samples per yield while filling, picks uniformly at random and swaps the last
    held sample into the gap; after the input ends it yields what it holds. Size <= 1: no shuffle."""

    def __init__(self, size: int, rng: random.Random):
        self.size, self.initial, self.rng = size, min(size, SHUFFLE_INITIAL), rng
        self.held: list[dict] = []
        self.drained = False  # the input ended

    def take(self, pull) -> dict | None:
        """The next sample, drawing input from `pull()` (None: the input ended); None when all is yielded."""
        if self.size <= 1:
            return pull()
        while not self.drained:
            sample = pull()
            if sample is None:
                self.drained = True
                break
            self.held.append(sample)
            if len(self.held) < self.size and (extra := pull()) is not None:
                self.held.append(extra)
            if len(self.held) >= self.initial:
                return self._pick()
        return self._pick() if self.held else None

    def _pick(self) -> dict:
        k = self.rng.randint(0, len(self.held) - 1)
        sample, self.held[k] = self.held[k], self.held[-1]
        self.held.pop()
        return sample


class SourceStream:
    """The decoded samples of one source in one slot (see the module docstring); an iterator.

    Each sample carries "origin": (source name, shard, byte offset of its first tar header), which `fetch` reads
    again. Corrupt samples and shard read errors go to `counter` (a `mimovl.data.stream.SkipCounter`).
    """

    def __init__(self, name: str, urls: list[str], slot: int, nslots: int, seed: int, shuffle_buffer: int,
                 resample: bool, counter, video_fps: float | None, max_frames: int | None):
        self.name, self.counter, self.video_fps, self.max_frames = name, counter, video_fps, max_frames
        self.order = ShardOrder(urls, stable_seed("order", seed, name), stable_seed("shards", seed, name, slot, nslots),
                                slot, nslots, resample)
        self.shuffle = Shuffle(shuffle_buffer, random.Random(stable_seed("shuffle", seed, name, slot, nslots)))
        self.stall = StallGuard(name, limit=10 * len(urls) + 10)
        self.shard, self.offset = None, 0  # the shard being read, and the byte offset to read it on from
        self._reading = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while (raw := self.shuffle.take(self._raw)) is not None:
            try:
                sample = self._decode(raw)
            except CorruptSample as exn:
                self.counter(exn)
                continue
            self.stall.opened = 0
            return sample
        raise StopIteration

    def _decode(self, raw: dict) -> dict:
        sample = decode_sample(raw, self.name, video_fps=self.video_fps, max_frames=self.max_frames)
        sample["origin"] = (self.name, raw["__url__"], raw["__offset__"])
        return sample

    def _raw(self) -> dict | None:
        """The next raw sample of the slot's shards; None when a single pass is through."""
        while True:
            if self._reading is None:
                if self.shard is None:
                    self.shard, self.offset = self.order.next(), 0
                    if self.shard is None:
                        return None
                    self.stall.opening()
                self._reading = read_shard(self.shard, self.offset, self.counter)
            raw, after = next(self._reading, (None, None))
            if after is None:  # the shard ended (with this sample, or before any)
                self._reading.close()
                self._reading, self.shard = None, None
            else:
                self.offset = after
            if raw is not None:
                return raw

    def fetch(self, places: list[tuple[str, int]]) -> dict[tuple[str, int], dict]:
        """The decoded samples at (shard, offset) places this stream yielded before, read again."""
        return {place: self._decode(raw) for place, raw in self._read(places).items()}

    def state_dict(self) -> dict:
        return {"order": self.order.state_dict(), "shard": self.shard, "offset": self.offset,
                "shuffle": {"rng": self.shuffle.rng.getstate(), "drained": self.shuffle.drained,
                            "held": [(raw["__url__"], raw["__offset__"]) for raw in self.shuffle.held]},
                "stall": self.stall.opened}

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state["order"])
        self.shard, self.offset, self.stall.opened = state["shard"], state["offset"], state["stall"]
        shuffle = state["shuffle"]
        self.shuffle.rng.setstate(shuffle["rng"])
        self.shuffle.drained = shuffle["drained"]
        held = [tuple(place) for place in shuffle["held"]]
        raws = self._read(held)
        self.shuffle.held = [raws[place] for place in held]

    def _read(self, places: list[tuple[str, int]]) -> dict[tuple[str, int], dict]:
        by_shard = defaultdict(set)
        for shard, offset in places:
            by_shard[shard].add(offset)
        raws = {(shard, offset): raw for shard, offsets in by_shard.items()
                for offset, raw in read_at(shard, offsets).items()}
        missing = [place for place in places if place not in raws]
        if missing:
            raise UsageError(f"source {self.name!r}: the saved stream position names samples that are no longer "
                             f"there (shard, byte offset: {missing[:3]}): a shard changed since the checkpoint. "
                             "Put the shards back as they were, or start over with resume=false")
        return raws
