"""Charades-STA-style temporal grounding -> "video" chats answered with "[mm:ss,mm:ss]".

Accepted layout: the text file of Charades-STA (charades_sta_train.txt / charades_sta_test.txt), one moment a
line,

    AO8RW 0.0 6.9##a person is putting a book on a shelf.

(VIDEO_ID START END in seconds, "##", the sentence), and the videos as --media-root/VIDEO_ID.mp4.
Each line becomes one sample whose video is decoded by `decode_video` at `fps` (default 2.0) with at most
`max_frames` (default 256) frames; consecutive lines of one video (the file's order) decode it once.
The answer reads "[mm:ss,mm:ss]", with a tenth of a second added when the time has one ("[00:01.5,00:06.9]";
the temporal reward reads both); meta holds {"task": "temporal_grounding", "answer": [start, end],
"segment": [start, end], "video_id", "label": sentence}, times in seconds as in the file.
Skipped and counted: a line that does not parse ("bad_line"), a segment that is not 0 <= start < end
("bad_segment") or starts after the last frame ("segment_outside_video"), a missing video ("video_missing"),
one that cannot be decoded to its end ("video_unreadable").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mimovl.data.convert.common import Counts, Skip, convert_rows, key_stem
from mimovl.data.convert.video import VideoDecodeError, decode_video, kept_fps
from mimovl.data.schema import chat, text, video

QUESTION = 'When does this happen in the video: "{}"? Answer as [mm:ss,mm:ss].'


def convert(
    path: str | Path, media_root: str | Path, counts: Counts, fps: float = 2.0, max_frames: int = 256
) -> Iterator[dict]:
    """Schema samples from a Charades-STA annotation file (layout in the module docstring)."""
    videos = _LastVideo(Path(media_root), fps, max_frames)
    return convert_rows(_lines(path), lambda line, key: [_sample(line, key, videos)], counts, key_stem(path))


def mmss(seconds: float) -> str:
    """'mm:ss', or 'mm:ss.t' when the time, rounded to a tenth of a second, has a fraction: 6.9 -> '00:06.9'."""
    tenths = round(seconds * 10)
    minutes, rest = divmod(tenths, 600)
    whole, tenth = divmod(rest, 10)
    return f"{minutes:02d}:{whole:02d}" + (f".{tenth}" if tenth else "")


def _lines(path: str | Path) -> Iterator[tuple[str, str]]:
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path.name}:{lineno}", line.strip()


def _sample(line: str, key: str, videos: _LastVideo) -> dict:
    head, sep, sentence = line.partition("##")
    fields = head.split()
    if not sep or len(fields) != 3 or not sentence.strip():
        raise Skip("bad_line", repr(line))
    video_id = fields[0]
    try:
        start, end = float(fields[1]), float(fields[2])
    except ValueError as exn:
        raise Skip("bad_line", repr(line)) from exn
    if not 0 <= start < end:
        raise Skip("bad_segment", f"[{start}, {end}]")
    clip = videos.get(video_id)
    if start > clip["timestamps"][-1]:
        raise Skip("segment_outside_video", f"starts at {start} s, the last frame is at {clip['timestamps'][-1]} s")
    sentence = sentence.strip()
    meta = {
        "task": "temporal_grounding", "answer": [start, end], "segment": [start, end],
        "video_id": video_id, "label": sentence,
    }
    question = QUESTION.format(sentence.rstrip("."))
    return {
        "key": key,
        "type": "video",
        "messages": chat([video(), text(question)], f"[{mmss(start)},{mmss(end)}]"),
        "images": [],
        "videos": [clip],
        "meta": meta,
    }


class _LastVideo:
    """Decodes videos by id, keeping the last one (or its failure): Charades-STA lists a video's moments
    together, so each video is decoded once without holding more than one in memory."""

    def __init__(self, root: Path, fps: float, max_frames: int):
        self.root, self.fps, self.max_frames = root, fps, max_frames
        self.video_id: str | None = None
        self.result: dict | Skip | None = None

    def get(self, video_id: str) -> dict:
        """The schema video for `video_id`; raises Skip("video_missing" | "video_unreadable")."""
        if video_id != self.video_id:
            self.video_id, self.result = video_id, self._decode(video_id)
        if isinstance(self.result, Skip):
            raise self.result
        return self.result

    def _decode(self, video_id: str) -> dict | Skip:
        path = self.root / f"{video_id}.mp4"
        if not path.is_file():
            return Skip("video_missing", str(path))
        try:
            frames, timestamps = decode_video(path, self.fps, self.max_frames)
        except VideoDecodeError as exn:
            return Skip("video_unreadable", str(exn))
        return {"frames": frames, "timestamps": timestamps, "fps": kept_fps(timestamps, self.fps)}
