"""Stream schema samples from webdataset shards as a seeded, weighted mix of sources.

    ds = mixed_stream({"caption": {"urls": "data/cap-{000000..000009}.tar", "weight": 3.0},
                       "ocr": {"urls": ["data/ocr-000000.tar"], "weight": 1.0}},
                      seed=0, shuffle_buffer=1000)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=4)   # yields schema samples

Training (resample=True) streams forever; eval (resample=False) reads every shard once.

Determinism: every random choice (which shard next, the shuffle buffer, which source next) comes from a
`random.Random` seeded from (seed, source, rank, world size, worker, worker count), so the same arguments give
the same sample sequence in every run; resuming re-reads the stream and skips consumed batches.

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
import hashlib
import io
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from itertools import islice

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from mimovl.data.schema import validate
from mimovl.data.tars import TRUNCATED, tar_samples
from mimovl.errors import UsageError

log = logging.getLogger(__name__)


# Why a sample was skipped, in a fixed order (the stages sum them over ranks as one vector); see the docstring.
SKIP_REASONS = ("truncated_member", "missing_member", "bad_json", "missing_field", "bad_image", "bad_schema")
DROPPED = (*SKIP_REASONS, "shard_errors")  # everything a stream counts as lost, in batch["dropped"] order


class CorruptSample(ValueError):
    """A sample that cannot be decoded; the message names its shard, key and the problem, `reason` is one of
    SKIP_REASONS."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class _Skip(ValueError):
    """A decoding failure whose reason its class knows (the other reasons follow from the exception type)."""

    reason = "bad_schema"


class TruncatedMember(_Skip):
    reason = "truncated_member"


class MissingMember(_Skip):
    reason = "missing_member"


class BadImage(_Skip):
    reason = "bad_image"


def sample_frames(timestamps: Sequence[float], target_fps: float | None, max_frames: int | None) -> list[int]:
    """Indices of the frames to keep: the frame nearest each tick of a `target_fps` grid from the first
    timestamp to the last; if that exceeds `max_frames`, `max_frames` ticks spread evenly over the same span.

    16 frames at 4 fps (0, 0.25, ..., 3.75) at target 2 fps -> [0, 2, 4, ..., 14] (0, 0.5, ..., 3.5).
    Sources slower than the target keep all their frames. None disables either limit.
    """
    ts = np.asarray(timestamps, dtype=float)
    idx = np.arange(len(ts))
    if len(ts) == 0:
        return []
    if target_fps:
        ticks = ts[0] + np.arange(int(np.floor((ts[-1] - ts[0]) * target_fps + 1e-6)) + 1) / target_fps
        idx = _nearest(ts, ticks)
    if max_frames and len(idx) > max_frames:
        idx = _nearest(ts, np.linspace(ts[0], ts[-1], max_frames))
    return idx.tolist()


def _nearest(ts: np.ndarray, ticks: np.ndarray) -> np.ndarray:
    right = np.clip(np.searchsorted(ts, ticks), 0, len(ts) - 1)
    left = np.clip(right - 1, 0, len(ts) - 1)
    pick = np.where(np.abs(ts[left] - ticks) <= np.abs(ts[right] - ticks), left, right)
    return np.unique(pick)


def decode_sample(
    raw: dict, source: str, *, video_fps: float | None = None, max_frames: int | None = None
) -> dict:
    """Turn one tar sample (webdataset's dict of member bytes) into a validated schema sample.

    Videos are subsampled to `video_fps` / `max_frames` here, so dropped frames are never decoded.
    Raises CorruptSample on anything wrong, with its reason (SKIP_REASONS): a member cut off, a missing member
    or field, bad JSON, undecodable or truncated image bytes, a schema violation.
    """
    try:
        return _decode(raw, source, video_fps, max_frames)
    except Exception as exn:
        where = f"shard {raw.get('__url__')} key {raw.get('__key__')}"
        raise CorruptSample(f"{where}: {type(exn).__name__}: {exn}", _skip_reason(exn)) from exn


def _skip_reason(exn: Exception) -> str:
    if isinstance(exn, _Skip):
        return exn.reason
    if isinstance(exn, (json.JSONDecodeError, UnicodeDecodeError)):
        return "bad_json"
    if isinstance(exn, KeyError):  # a field read from the JSON header
        return "missing_field"
    return "bad_schema"


def _decode(raw: dict, source: str, video_fps: float | None, max_frames: int | None) -> dict:
    if TRUNCATED in raw:
        raise TruncatedMember("the shard ends inside one of its members")
    if "json" not in raw:
        raise MissingMember("missing member KEY.json")
    header = json.loads(raw["json"])
    images, videos = [], []
    for item in header["media"]:
        if item["kind"] == "image":
            images.append(_image(raw, item["name"]))
        elif item["kind"] == "video":
            names, ts = item["names"], [float(t) for t in item["timestamps"]]
            if len(names) != len(ts):
                raise ValueError(f"video has {len(names)} frames but {len(ts)} timestamps")
            keep = sample_frames(ts, video_fps, max_frames)
            kept_ts = [ts[k] for k in keep]
            fps = float(item["fps"])
            if len(keep) < len(ts):  # the rate of what was kept
                fps = (len(keep) - 1) / (kept_ts[-1] - kept_ts[0]) if len(keep) > 1 else fps
            videos.append(
                {"frames": [_image(raw, names[k]) for k in keep], "timestamps": kept_ts, "fps": fps}
            )
        else:
            raise ValueError(f"unknown media kind {item['kind']!r}")
    sample = {
        "key": raw["__key__"],
        "source": source,
        "type": header["type"],
        "messages": header["messages"],
        "images": images,
        "videos": videos,
        "meta": header["meta"],
        "skipped_before": 0,
        "dropped_before": {},
    }
    validate(sample)
    return sample


def _image(raw: dict, name: str) -> Image.Image:
    if name not in raw:
        raise MissingMember(f"missing member KEY.{name}")
    try:
        img = Image.open(io.BytesIO(raw[name]))
        img.load()  # decode now: truncated or corrupt bytes fail here, not in a training step
        return img.convert("RGB")
    except Exception as exn:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise BadImage(f"member KEY.{name}: {type(exn).__name__}: {exn}") from exn


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
    See the module docstring for determinism and splitting.
    """
    return MixedStream(sources, seed, shuffle_buffer, resample, video_fps, max_frames, rank, world_size, config_key)


class MixedStream(torch.utils.data.IterableDataset):
    """The dataset mixed_stream returns; each DataLoader worker builds its own pipelines in __iter__."""

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

    def __iter__(self) -> Iterator[dict]:
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        if self.rank is not None:
            rank, world_size = self.rank, self.world_size
        slot, nslots = rank * num_workers + worker, world_size * num_workers
        counter = SkipCounter()
        streams = [
            iter(self._pipeline(name, urls, slot, nslots, counter))
            for name, (urls, _) in self.sources.items()
        ]
        weights = [w for _, w in self.sources.values()]
        rng = random.Random(stable_seed("mix", self.seed, slot, nslots))
        return _count_skips(_mix(streams, weights, rng), counter)

    def _pipeline(
        self, name: str, urls: list[str], slot: int, nslots: int, counter: SkipCounter
    ) -> wds.DataPipeline:
        # webdataset's split_by_node / split_by_worker read the rank only from the environment; one slice
        # over the global slot does both and honours explicit rank arguments.
        if self.resample:
            mine = urls[slot::nslots] if len(urls) >= nslots else urls
            shard_seed = stable_seed("shards", self.seed, name, slot, nslots)
            shards = [wds.ResampledShards(mine, seed=shard_seed, worker_seed=lambda: 0, deterministic=True)]
        else:
            # the same shard order on every slot, so the slices stay disjoint
            order_seed = stable_seed("order", self.seed, name)
            shards = [wds.SimpleShardList(urls, seed=order_seed), lambda src: islice(src, slot, None, nslots)]
        shuffle = None
        if self.shuffle_buffer > 1:
            shuffle = wds.shuffle(
                self.shuffle_buffer, rng=random.Random(stable_seed("shuffle", self.seed, name, slot, nslots))
            )
        decode = partial(decode_sample, source=name, video_fps=self.video_fps, max_frames=self.max_frames)
        stall = StallGuard(name, limit=10 * len(urls) + 10)
        # shuffle raw member bytes (compressed), decode afterwards: the buffer stays small
        return wds.DataPipeline(
            *shards, stall.count_shards, partial(tar_samples, handler=counter), shuffle,
            wds.map(decode, handler=counter), stall.reset_on_samples,
        )


class StallGuard:
    """Fails a source that keeps opening shards without yielding one good sample.

    A resampled source of empty or all-corrupt shards would otherwise spin forever without a word.
    """

    def __init__(self, name: str, limit: int):
        self.name, self.limit, self.opened = name, limit, 0

    def count_shards(self, shards: Iterator) -> Iterator:
        for shard in shards:
            self.opened += 1
            if self.opened > self.limit:
                raise RuntimeError(
                    f"source {self.name!r}: opened {self.opened - 1} shards in a row without one good sample "
                    "(empty shards, or only corrupt samples?)"
                )
            yield shard

    def reset_on_samples(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            self.opened = 0
            yield sample


def _mix(streams: list[Iterator[dict]], weights: list[float], rng: random.Random) -> Iterator[dict]:
    """Draw the next sample from a source chosen by weight; an exhausted source drops out of the draw.

    Written here because wds.RandomMix draws from the global `random` module, which no seed here controls.
    """
    streams, weights = list(streams), list(weights)
    while streams:
        i = rng.choices(range(len(streams)), weights)[0]
        try:
            yield next(streams[i])
        except StopIteration:
            del streams[i], weights[i]


def _count_skips(samples: Iterator[dict], counter: SkipCounter) -> Iterator[dict]:
    # one sample of lookahead so the losses after the last sample of a finite stream are still reported
    prev = None
    for sample in samples:
        _carry(sample, counter.take())
        if prev is not None:
            yield prev
        prev = sample
    if prev is not None:
        _carry(prev, counter.take())
        yield prev


def _carry(sample: dict, dropped: Counter) -> None:
    """Adds `dropped` to what `sample` reports as lost before it (its "dropped_before" and "skipped_before")."""
    total = Counter(sample["dropped_before"]) + dropped
    sample["dropped_before"] = dict(total)
    sample["skipped_before"] = sum(total[reason] for reason in SKIP_REASONS)


def stable_seed(*parts) -> int:
    """A 64-bit seed from any printable parts; unlike hash(), the same in every process."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


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
