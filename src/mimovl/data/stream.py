"""Stream schema samples from webdataset shards as a seeded, weighted mix of sources.

    ds = mixed_stream({"caption": {"urls": "data/cap-{000000..000009}.tar", "weight": 3.0},
                       "ocr": {"urls": ["data/ocr-000000.tar"], "weight": 1.0}},
                      seed=0, shuffle_buffer=1000)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=4)   # yields schema samples

Training (resample=True) streams forever; eval (resample=False) reads every shard once.

Determinism: every random choice (which shard next, the shuffle buffer, which source next) comes from a
`random.Random` seeded from (seed, source, rank, world size, worker, worker count), so the same arguments give
the same sample sequence in every run.

Resuming: the stream's position is its state. `MixedStream.state_dict()` (in the worker that iterates it; a
StatefulDataLoader collects one per worker) gives, per source, the shard being read and the byte offset to read it
on from, the shuffle buffer's random state and the shard and offset of each sample it holds
(`mimovl.data.sources`), and the mixer's random state, its one sample of lookahead (by shard and offset) and the
loss counts not yet reported. `load_state_dict(state)` before `iter` goes on exactly where the saved stream was:
it re-reads the held samples by offset (the lookahead one is decoded again) and reads nothing else twice. Every
sample carries "origin" (source, shard, offset): `MixedIterator.fetch` reads samples again by it.

Splitting: rank r of world size W, DataLoader worker w of N, reads "slot" r*N + w of W*N. A source with at
least W*N shards gives each slot its own shards (disjoint); with fewer, every slot resamples from all of them
(own seed, so no rank starves). With resample=False the split is always disjoint, so a slot may get none.

What is lost on the way is logged and counted (SkipCounter), never dropped silently. Each yielded sample
carries what was lost since the previous one (the losses after the last sample of a finite stream are added
to it): "dropped_before", {name: count} over DROPPED (only names with a count), and "skipped_before", the
total of its skipped samples. The names:

    truncated_member  a sample cut off by a shard that ends inside one of its members
    missing_member    its KEY.json, or an image or frame its JSON names, is not in the tar
    bad_json          KEY.json is not valid JSON (or not UTF-8)
    missing_field     the JSON lacks a field (type, messages, meta, media, a media item's kind, ...)
    bad_image         an image or video frame does not decode (corrupt, truncated, not an image)
    bad_schema        anything else `mimovl.data.schema.validate` or the media layout rejects
    shard_errors      shard reads that failed or stopped early: cannot open, zero bytes, not a tar, cut inside a
                      header or member, no end-of-archive marker (`mimovl.data.tars`); the log names the shard.
                      A resampled shard counts again each time it is read.

The training stages sum these over ranks into summary.json: `skipped` (all skipped samples),
`skipped_by_reason` ({reason: count} over SKIP_REASONS) and `shard_errors`.
"""

from __future__ import annotations

import glob
import logging
import os
import random
from collections import Counter, defaultdict

import torch
import webdataset as wds

from mimovl.data.decode import CorruptSample, decode_sample, sample_frames  # noqa: F401 (the reader's names)
from mimovl.data.sources import SourceStream, stable_seed
from mimovl.errors import UsageError

log = logging.getLogger(__name__)


# Why a sample was skipped, in a fixed order (the stages sum them over ranks as one vector); see the docstring.
SKIP_REASONS = ("truncated_member", "missing_member", "bad_json", "missing_field", "bad_image", "bad_schema")
DROPPED = (*SKIP_REASONS, "shard_errors")  # everything a stream counts as lost, in batch["dropped"] order

class SkipCounter:
    """A webdataset error handler that logs each failure, counts it by DROPPED name and never re-raises.

    A CorruptSample is a skipped sample, counted under its reason; anything else is a shard read that failed or
    stopped early (`shard_errors`: one per read from `mimovl.data.tars`; the samples after the failure are
    lost uncounted, a sample cut short is counted as truncated_member). `counts` holds everything so far,
    `take()` returns (and resets) what came since its last call.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()

    def __call__(self, exn: Exception) -> bool:
        if isinstance(exn, CorruptSample):
            name = exn.reason
            log.warning("skipped sample (%s): %s", name, exn)
        else:
            name = "shard_errors"
            log.warning("shard read error: %s: %s", type(exn).__name__, exn)
        self.counts[name] += 1
        self._pending[name] += 1
        return True  # webdataset: True means continue

    def take(self) -> Counter[str]:
        taken, self._pending = self._pending, Counter()
        return taken

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "pending": dict(self._pending)}

    def load_state_dict(self, state: dict) -> None:
        self.counts, self._pending = Counter(state["counts"]), Counter(state["pending"])


def mixed_stream(
    sources: dict[str, dict],
    seed: int,
    shuffle_buffer: int,
    resample: bool = True,
    video_fps: float | None = 2.0,
    max_frames: int | None = 256,
    rank: int | None = None,
    world_size: int | None = None,
    config_key: str = "data.sources",
) -> MixedStream:
    """A stream of schema samples mixing `sources` ({name: {"urls": str | list, "weight": float}}) by weight.

    urls: a string or a list of strings (or paths); each may hold brace patterns ("a-{000..009}.tar").
    shuffle_buffer: samples held per source in each worker, as undecoded bytes (<= 1: no shuffle).
    video_fps / max_frames: frame subsampling at read time (sample_frames); None keeps every frame.
    rank / world_size default to env RANK / WORLD_SIZE or torch.distributed, read when iteration starts.
    config_key: where the sources are configured, named by the error for a pattern that matches nothing.
    See the module docstring for determinism, splitting and resuming.
    """
    return MixedStream(sources, seed, shuffle_buffer, resample, video_fps, max_frames, rank, world_size, config_key)


class MixedStream(torch.utils.data.IterableDataset):
    """The dataset mixed_stream returns; each DataLoader worker builds its own `MixedIterator` in __iter__.

    `state_dict()` is the position of the iterator last built (in this process: a worker's own); `load_state_dict`
    makes the next `iter` start there (the same sources, seed, split and settings, or a ValueError).
    """

    def __init__(self, sources, seed, shuffle_buffer, resample, video_fps, max_frames, rank, world_size,
                 config_key="data.sources"):
        super().__init__()
        if not sources:
            raise ValueError("mixed_stream needs at least one source")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        self.sources = {
            name: (expand_shards(f"{config_key}.{name}", spec["urls"]), float(spec.get("weight", 1.0)))
            for name, spec in sources.items()
        }
        if any(w <= 0 for _, w in self.sources.values()):
            raise ValueError("source weights must be positive")
        self.seed, self.shuffle_buffer, self.resample = seed, shuffle_buffer, resample
        self.video_fps, self.max_frames = video_fps, max_frames
        self.rank, self.world_size = rank, world_size
        self._live: MixedIterator | None = None
        self._resume: dict | None = None

    def __iter__(self) -> MixedIterator:
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        if self.rank is not None:
            rank, world_size = self.rank, self.world_size
        self._live = MixedIterator(self, rank * num_workers + worker, world_size * num_workers)
        if self._resume is not None:
            state, self._resume = self._resume, None
            self._live.load_state_dict(state)
        return self._live

    def state_dict(self) -> dict | None:
        return self._live.state_dict() if self._live is not None else self._resume

    def load_state_dict(self, state: dict | None) -> None:
        self._resume = state


class MixedIterator:
    """One slot's samples: each drawn from a source chosen by weight (an exhausted source drops out of the draw),
    with what was lost since the previous sample (see the module docstring); its position is its state.

    Written here because wds.RandomMix draws from the global `random` module, which no seed here controls, and
    keeps its place where nothing can save it.
    """

    def __init__(self, stream: MixedStream, slot: int, nslots: int):
        self.slot, self.nslots = slot, nslots
        self.counter = SkipCounter()
        self.sources = {
            name: SourceStream(name, urls, slot, nslots, stream.seed, stream.shuffle_buffer, stream.resample,
                               self.counter, stream.video_fps, stream.max_frames)
            for name, (urls, _) in stream.sources.items()
        }
        self.weights = {name: weight for name, (_, weight) in stream.sources.items()}
        self.alive = list(self.sources)  # the sources still in the draw, in order
        self.rng = random.Random(stable_seed("mix", stream.seed, slot, nslots))
        # One sample of lookahead, so the losses after the last sample of a finite stream are still reported.
        self.ahead: dict | None = None
        self.done = False  # every source is exhausted

    def __iter__(self) -> MixedIterator:
        return self

    def __next__(self) -> dict:
        while not self.done:
            sample = self._draw()
            if sample is None:
                self.done = True
                break
            _carry(sample, self.counter.take())
            sample, self.ahead = self.ahead, sample
            if sample is not None:
                return sample
        if self.ahead is None:
            raise StopIteration
        sample, self.ahead = self.ahead, None
        _carry(sample, self.counter.take())
        return sample

    def _draw(self) -> dict | None:
        while self.alive:
            i = self.rng.choices(range(len(self.alive)), [self.weights[name] for name in self.alive])[0]
            try:
                return next(self.sources[self.alive[i]])
            except StopIteration:
                del self.alive[i]
        return None

    def fetch(self, origins: list[tuple]) -> dict[tuple, dict]:
        """{origin: sample} for samples this stream yielded before (their "origin"), decoded again."""
        by_source = defaultdict(list)
        for name, shard, offset in origins:
            by_source[name].append((shard, offset))
        return {(name, *place): sample for name, places in by_source.items()
                for place, sample in self.sources[name].fetch(places).items()}

    def state_dict(self) -> dict:
        ahead = self.ahead and {"origin": self.ahead["origin"], "dropped_before": dict(self.ahead["dropped_before"])}
        return {"slot": [self.slot, self.nslots], "sources": {name: s.state_dict() for name, s in self.sources.items()},
                "mix": {"rng": self.rng.getstate(), "alive": list(self.alive)}, "counter": self.counter.state_dict(),
                "ahead": ahead, "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        if list(state["slot"]) != [self.slot, self.nslots] or set(state["sources"]) != set(self.sources):
            raise ValueError(f"a stream position of slot {state['slot']} with sources {sorted(state['sources'])} "
                             f"cannot resume slot {[self.slot, self.nslots]} of {sorted(self.sources)}")
        for name, source in self.sources.items():
            source.load_state_dict(state["sources"][name])
        self.rng.setstate(state["mix"]["rng"])
        self.alive = list(state["mix"]["alive"])
        self.counter.load_state_dict(state["counter"])
        self.done, self.ahead = state["done"], None
        if state["ahead"] is not None:
            origin = tuple(state["ahead"]["origin"])
            self.ahead = self.fetch([origin])[origin]
            _carry(self.ahead, Counter(state["ahead"]["dropped_before"]))


def _carry(sample: dict, dropped: Counter) -> None:
    """Adds `dropped` to what `sample` reports as lost before it (its "dropped_before" and "skipped_before")."""
    total = Counter(sample["dropped_before"]) + dropped
    sample["dropped_before"] = dict(total)
    sample["skipped_before"] = sum(total[reason] for reason in SKIP_REASONS)


def expand_shards(key: str, urls: str | list[str]) -> list[str]:
    """Shard paths from brace patterns ("a-{000..009}.tar"), "::"-joined lists and local globs ("dir/*.tar");
    a UsageError naming the config key when nothing matches or a listed shard is missing."""
    items = [urls] if isinstance(urls, str) else urls
    braced = [u for item in items for u in wds.shardlists.expand_urls(str(item))]
    expanded = [p for u in braced for p in (sorted(glob.glob(u)) if any(c in u for c in "*?[") else [u])]
    if not expanded:
        raise UsageError(f"{key}={urls!r} matches no shard. Check the pattern (brace patterns need Hydra's quotes: "
                         f"\"+{key}='dir/shard-{{000000..000009}}.tar'\"), or write shards with "
                         "python -m mimovl.data.shards")
    missing = [u for u in expanded if "://" not in u and not u.startswith("pipe:") and not os.path.exists(u)]
    if missing:
        raise UsageError(f"{key}={urls!r}: {len(missing)} of its shards do not exist, e.g. {missing[:3]}")
    return expanded
