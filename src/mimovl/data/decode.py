"""Decoding one tar sample (webdataset's dict of member bytes) into a validated schema sample.

    sample = decode_sample(raw, "caption", video_fps=2.0, max_frames=256)   # or CorruptSample, with its reason

Videos are subsampled at read time (`sample_frames`), so dropped frames are never decoded. The stream
(`mimovl.data.stream`) decodes every sample it yields here and counts each CorruptSample by its reason.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mimovl.data.schema import validate
from mimovl.data.tars import TRUNCATED


class CorruptSample(ValueError):
    """A sample that cannot be decoded; the message names its shard, key and the problem, `reason` is one of
    `mimovl.data.stream.SKIP_REASONS`."""

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
    Raises CorruptSample on anything wrong, with its reason (`mimovl.data.stream.SKIP_REASONS`): a member cut
    off, a missing member or field, bad JSON, undecodable or truncated image bytes, a schema violation.
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
