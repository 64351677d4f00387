"""Where video frames come from at training time: decoded from the mp4 vs read from frames stored in shards.

    python benchmarks/video_decode.py                       # 4 clips of 60 s, 30 fps, 320x240, at 2 fps
    python benchmarks/video_decode.py --seconds 120 --size 640 360

The repo stores frames in shards (the converters decode once, at 2 fps and at most 256 frames, with
mimovl.data.convert.video.decode_video) and the reader only decodes JPEGs. This measures both paths in one
process on the same clips: videos/s and frames/s of decoding the mp4 at the sampling rate, of reading the stored
frames back through the training reader (mixed_stream), and the bytes each keeps on disk.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import av  # noqa: E402
import numpy as np  # noqa: E402

from mimovl.data.convert.video import decode_video, kept_fps  # noqa: E402
from mimovl.data.schema import chat, text, video  # noqa: E402
from mimovl.data.shards import write_shards  # noqa: E402
from mimovl.data.stream import mixed_stream  # noqa: E402


def write_clip(path: Path, seconds: float, fps: int, size: tuple[int, int], seed: int) -> None:
    """An H.264 clip of moving noise blocks (not trivially compressible)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(int(seconds * fps)):
            tile = np.roll(base, i, axis=1).repeat(8, axis=0).repeat(8, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(tile, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--source-fps", type=int, default=30)
    parser.add_argument("--size", type=int, nargs=2, default=[320, 240])
    parser.add_argument("--fps", type=float, default=2.0, help="sampling rate (report: 2)")
    parser.add_argument("--max-frames", type=int, default=256, help="frame cap (report: 256)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="video-bench-"))
    clips = [work / f"clip{i}.mp4" for i in range(args.clips)]
    for i, clip in enumerate(clips):
        write_clip(clip, args.seconds, args.source_fps, tuple(args.size), seed=i)

    start = time.perf_counter()
    samples, frames = [], 0
    for i, clip in enumerate(clips):
        kept, times = decode_video(clip, args.fps, args.max_frames)
        frames += len(kept)
        samples.append({"key": f"clip{i}", "type": "video", "meta": {},
                        "messages": chat([video(), text("What happens?")], "Blocks move."), "images": [],
                        "videos": [{"frames": kept, "timestamps": times, "fps": kept_fps(times, args.fps)}]})
    decode_s = time.perf_counter() - start

    shards = write_shards(samples, str(work / "video-%06d.tar"), image_ext="jpg", progress=False)
    start = time.perf_counter()
    read = list(mixed_stream({"video": {"urls": shards}}, seed=0, shuffle_buffer=0, resample=False,
                             video_fps=args.fps, max_frames=args.max_frames))
    read_s = time.perf_counter() - start
    assert len(read) == len(clips) and sum(len(s["videos"][0]["frames"]) for s in read) == frames

    mp4_bytes = sum(c.stat().st_size for c in clips)
    shard_bytes = sum(Path(s).stat().st_size for s in shards)
    print(f"{args.clips} clips of {args.seconds:.0f} s at {args.source_fps} fps, {args.size[0]}x{args.size[1]}; "
          f"sampled at {args.fps} fps (cap {args.max_frames}): {frames} frames")
    print(f"{'path':<28}{'videos/s':>10}{'frames/s':>10}{'MB on disk':>12}")
    for name, seconds, size in (("decode mp4 (PyAV)", decode_s, mp4_bytes),
                                ("read stored JPEG frames", read_s, shard_bytes)):
        print(f"{name:<28}{len(clips) / seconds:>10.2f}{frames / seconds:>10.1f}{size / 1e6:>12.2f}")
    print(f"stored frames read {decode_s / read_s:.1f}x faster than decoding; they take "
          f"{shard_bytes / mp4_bytes:.1f}x the mp4's bytes")


if __name__ == "__main__":
    main()
