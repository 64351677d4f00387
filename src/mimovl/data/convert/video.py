"""Decoding a video file into the frames a schema video holds, with PyAV.

    frames, timestamps = decode_video("clip.mp4", fps=2.0, max_frames=256)
    video = {"frames": frames, "timestamps": timestamps, "fps": kept_fps(timestamps, 2.0)}

Frames are chosen by `mimovl.data.stream.sample_frames` (the reader's own rule, so converting at 2 fps and
reading at 2 fps keep the same frames): the frame nearest each tick of 1/fps from the first frame to the last,
thinned evenly to `max_frames`. Only the chosen frames are converted to images: a first pass reads packet
timestamps without decoding, a second decodes and keeps the chosen ones.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
from PIL import Image

from mimovl.data.stream import sample_frames


class VideoDecodeError(RuntimeError):
    """A video that cannot be opened or decoded to its end: missing, truncated, corrupt, or without frames."""


def decode_video(path: str | Path, fps: float = 2.0, max_frames: int = 256) -> tuple[list[Image.Image], list[float]]:
    """The RGB frames sampled at `fps` (at most `max_frames`) and their times in seconds (pts x time_base).

    Times are the stream's presentation times as stored, not shifted to start at 0. Raises VideoDecodeError.
    """
    pts, time_base = _frame_pts(path)
    if not pts:
        raise VideoDecodeError(f"{path}: no video frames")
    keep = sample_frames([float(p * time_base) for p in pts], fps, max_frames)
    wanted = {pts[k]: i for i, k in enumerate(keep)}
    frames: list[Image.Image | None] = [None] * len(keep)
    try:
        with _open(path) as container:
            for frame in container.decode(container.streams.video[0]):
                i = wanted.get(frame.pts)
                if i is not None and frames[i] is None:
                    frames[i] = frame.to_image().convert("RGB")
                    if all(f is not None for f in frames):
                        break
    except (av.error.FFmpegError, OSError) as exn:
        raise VideoDecodeError(f"{path}: decoding failed: {type(exn).__name__}: {exn}") from exn
    missing = sum(f is None for f in frames)
    if missing:
        raise VideoDecodeError(f"{path}: {missing} of {len(frames)} chosen frames could not be decoded (truncated?)")
    return frames, [float(pts[k] * time_base) for k in keep]


def kept_fps(timestamps: list[float], fps: float) -> float:
    """The rate of the frames kept: (n - 1) / span, or `fps` when one frame (or one instant) is all there is."""
    span = timestamps[-1] - timestamps[0] if timestamps else 0.0
    return (len(timestamps) - 1) / span if span > 0 else float(fps)


def _frame_pts(path: str | Path) -> tuple[list[int], Fraction]:
    """Every frame's presentation timestamp (in time_base units), sorted, and the time_base; read from the
    packets, without decoding."""
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
    except (av.error.FFmpegError, OSError) as exn:
        raise VideoDecodeError(f"{path}: reading packets failed: {type(exn).__name__}: {exn}") from exn
    # A file cut short after its index (moov first) demuxes without an error: only the count gives it away.
    if stream.frames and len(pts) < stream.frames:
        raise VideoDecodeError(f"{path}: truncated: its index lists {stream.frames} frames, {len(pts)} are there")
    return pts, stream.time_base


def _open(path: str | Path):
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exn:
        raise VideoDecodeError(f"{path}: cannot open: {type(exn).__name__}: {exn}") from exn
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path}: no video stream")
    return container
