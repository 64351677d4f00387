"""Write samples into webdataset shards (layout in mimovl.data.schema), from Python or from a JSONL file.

Usage:
    python -m mimovl.data.shards --jsonl data.jsonl --media-root DIR --out 'out/shard-%06d.tar' [--maxcount N]
    mimovl-shards ...   (the same, as a console script)

Each JSONL line is {"key"?, "type", "messages", "meta"?, "media": [...]} with media in order of appearance,
{"kind": "image", "path": "a.png"} or {"kind": "video", "frames": ["f0.jpg", ...], "timestamps": [...]}
(optionally "fps"), paths relative to --media-root. Lines that fail to parse, validate or load are skipped,
counted and reported at the end; they never stop the run. PNG and JPEG files are stored as they are.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from mimovl.data.schema import validate

log = logging.getLogger(__name__)

_STORED_EXT = {"PNG": "png", "JPEG": "jpg"}


def encode_image(img: Image.Image, ext: str = "png") -> bytes:
    """PNG (lossless) or JPEG (quality 95) bytes of an image."""
    buf = io.BytesIO()
    if ext == "png":
        img.save(buf, format="PNG", compress_level=1)  # level 1: several times faster, files barely larger
    else:
        img.convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_shards(
    samples: Iterable[dict],
    pattern: str,
    maxcount: int = 1000,
    maxsize: float = 1e9,
    image_ext: str = "png",
    progress: bool = True,
) -> list[str]:
    """Validate and write schema samples (PIL images) to shards named `pattern % i`; return the shard paths.

    Images are stored as `image_ext` ("png" keeps pixels exact, "jpg" is smaller), video frames as JPEG.
    Raises ValueError on an invalid sample or a repeated key: here bad input is a bug, not data noise.
    """
    seen: set[str] = set()

    def records() -> Iterator[dict]:
        for s in samples:
            validate(s)
            if s["key"] in seen:
                raise ValueError(f"duplicate key {s['key']!r}")
            seen.add(s["key"])
            yield _record(s["key"], s["type"], s["messages"], s["meta"], _encode_media(s, image_ext))

    return write_records(
        tqdm(records(), desc="shards", unit="sample", disable=not progress), pattern, maxcount, maxsize
    )


def write_jsonl_shards(
    jsonl: str | Path, media_root: str | Path, pattern: str, maxcount: int = 1000, maxsize: float = 1e9
) -> tuple[list[str], int, list[tuple[int, str]]]:
    """Convert a JSONL file (format in the module docstring) to shards.

    Returns (shard paths, samples written, [(line number, reason)] for every skipped line).
    """
    jsonl, media_root = Path(jsonl), Path(media_root)
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", jsonl.stem)
    bad: list[tuple[int, str]] = []
    seen: set[str] = set()
    written = 0

    def records() -> Iterator[dict]:
        nonlocal written
        with open(jsonl, encoding="utf-8") as f:
            for lineno, line in enumerate(tqdm(f, desc=jsonl.name, unit="line"), start=1):
                if not line.strip():
                    continue
                try:
                    record = _line_record(json.loads(line), f"{stem}_{lineno:08d}", media_root)
                    if record["__key__"] in seen:
                        raise ValueError(f"duplicate key {record['__key__']!r}")
                except Exception as exn:  # any bad line is skipped, never fatal
                    log.warning("%s:%d skipped: %s", jsonl, lineno, exn)
                    bad.append((lineno, f"{type(exn).__name__}: {exn}"))
                    continue
                seen.add(record["__key__"])
                written += 1
                yield record

    shards = write_records(records(), pattern, maxcount, maxsize)
    return shards, written, bad


def main(argv: list[str] | None = None) -> int:
    """The `mimovl-shards` console script."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jsonl", required=True, help="input JSONL, one sample per line")
    parser.add_argument("--media-root", default=".", help="directory the media paths are relative to")
    parser.add_argument("--out", required=True, help="shard name pattern, e.g. 'out/shard-%%06d.tar'")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most")
    parser.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard at most (approximate)")
    args = parser.parse_args(argv)
    if "%" not in args.out:
        parser.error(f"--out needs a shard number placeholder such as %06d: {args.out!r}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    shards, written, bad = write_jsonl_shards(
        args.jsonl, args.media_root, args.out, args.maxcount, args.maxsize
    )
    print(f"wrote {written} samples to {len(shards)} shards; skipped {len(bad)} bad lines", file=sys.stderr)
    for lineno, reason in bad[:20]:
        print(f"  line {lineno}: {reason}", file=sys.stderr)
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more", file=sys.stderr)
    if written == 0:  # an empty tar would only stall a reader; leave nothing behind and fail
        for path in shards:
            os.remove(path)
        print("error: no sample could be written", file=sys.stderr)
        return 1
    return 0


def write_records(records: Iterable[dict], pattern: str, maxcount: int, maxsize: float) -> list[str]:
    """Writes encoded records (the on-disk members of samples, as `_record` builds them) to shards named
    `pattern % i`; returns their paths. Curation writes kept samples through it with their original bytes."""
    os.makedirs(os.path.dirname(pattern) or ".", exist_ok=True)
    paths: list[str] = []
    # mtime=0 makes shards byte-identical across runs of the same input
    with wds.ShardWriter(
        pattern, maxcount=maxcount, maxsize=maxsize, post=paths.append, verbose=0, mtime=0
    ) as w:
        for record in records:
            w.write(record)
    return paths


def _record(key: str, sample_type: str, messages: list, meta: dict, media: list[dict]) -> dict:
    """A ShardWriter record: KEY.json plus one member per image and video frame.

    `media` holds encoded items in order of appearance: {"kind": "image", "ext": "png"|"jpg", "data": bytes}
    or {"kind": "video", "frames": [jpeg bytes], "timestamps": [...], "fps": float}.
    """
    record: dict = {"__key__": key}
    entries: list[dict] = []
    n_images = n_videos = 0
    for item in media:
        if item["kind"] == "image":
            name = f"img{n_images}.{item['ext']}"
            record[name] = item["data"]
            entries.append({"kind": "image", "name": name})
            n_images += 1
        else:
            names = [f"vid{n_videos}.{k:04d}.jpg" for k in range(len(item["frames"]))]
            record.update(zip(names, item["frames"]))
            entries.append(
                {
                    "kind": "video",
                    "names": names,
                    "timestamps": [float(t) for t in item["timestamps"]],
                    "fps": float(item["fps"]),
                }
            )
            n_videos += 1
    header = {"type": sample_type, "messages": messages, "meta": meta, "media": entries}
    record["json"] = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return record


def _encode_media(sample: dict, image_ext: str) -> list[dict]:
    images, videos = iter(sample["images"]), iter(sample["videos"])
    media = []
    for part in (p for m in sample["messages"] for p in m["content"]):
        if part["type"] == "image":
            media.append({"kind": "image", "ext": image_ext, "data": encode_image(next(images), image_ext)})
        elif part["type"] == "video":
            v = next(videos)
            encoded = {id(f): encode_image(f, "jpg") for f in v["frames"]}  # a repeated frame is encoded once
            frames = [encoded[id(f)] for f in v["frames"]]
            media.append({"kind": "video", "frames": frames, "timestamps": v["timestamps"], "fps": v["fps"]})
    return media


def _load(path: Path) -> tuple[bytes, Image.Image]:
    """File bytes and the fully decoded RGB image (decoding everything catches truncated files)."""
    data = path.read_bytes()
    img = Image.open(io.BytesIO(data))
    img.load()
    return data, img


def _line_record(row: dict, default_key: str, media_root: Path) -> dict:
    """Load, validate and encode one JSONL row; raises on anything wrong."""
    media, images, videos = [], [], []
    for item in row["media"]:
        if item["kind"] == "image":
            data, img = _load(media_root / item["path"])
            ext = _STORED_EXT.get(img.format)
            rgb = img.convert("RGB")
            if ext is None:
                data, ext = encode_image(rgb, "png"), "png"
            media.append({"kind": "image", "ext": ext, "data": data})
            images.append(rgb)
        elif item["kind"] == "video":
            loaded = [_load(media_root / p) for p in item["frames"]]
            frames = [data if img.format == "JPEG" else encode_image(img, "jpg") for data, img in loaded]
            ts = [float(t) for t in item["timestamps"]]
            fps = float(
                item.get("fps")
                or ((len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 1.0)
            )
            media.append({"kind": "video", "frames": frames, "timestamps": ts, "fps": fps})
            videos.append({"frames": [img.convert("RGB") for _, img in loaded], "timestamps": ts, "fps": fps})
        else:
            raise ValueError(f"unknown media kind {item['kind']!r}")
    sample = {
        "key": row.get("key", default_key),
        "type": row["type"],
        "messages": row["messages"],
        "meta": row.get("meta", {}),
        "images": images,
        "videos": videos,
    }
    validate(sample)
    return _record(sample["key"], sample["type"], sample["messages"], sample["meta"], media)


if __name__ == "__main__":
    sys.exit(main())
