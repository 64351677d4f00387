"""Convert a public dataset layout to shards.

Usage:
    python -m mimovl.data.convert FORMAT --input FILE --media-root DIR --out 'DIR/name-%06d.tar'
        [--maxcount 1000] [--image-ext png|jpg] [--fps 2.0] [--max-frames 256] [--box-format xywh|xyxy]

FORMAT is one of mimovl.data.convert.CONVERTERS (each module's docstring gives the layout it accepts).
--fps / --max-frames apply to charades, --box-format to screenspot. Bad entries are skipped, counted by
reason and logged; the counts are printed at the end. Exits 1 (leaving no shard) when nothing was written.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys

from mimovl.data.convert import CONVERTERS, convert_to_shards

OPTIONS = ("fps", "max_frames", "box_format")  # converter keyword arguments the command line can set


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, convert, print the counts; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m mimovl.data.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("format", choices=sorted(CONVERTERS), help="the input's layout")
    parser.add_argument("--input", required=True, help="the annotation file (JSON, JSONL or Charades-STA text)")
    parser.add_argument("--media-root", default=".", help="directory the image / video names are relative to")
    parser.add_argument("--out", required=True, help="shard name pattern, e.g. 'out/name-%%06d.tar'")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most")
    parser.add_argument("--image-ext", choices=("png", "jpg"), default="png", help="how images are stored")
    parser.add_argument("--fps", type=float, help="charades: frames per second to keep (default 2.0)")
    parser.add_argument("--max-frames", type=int, help="charades: frames per video at most (default 256)")
    parser.add_argument("--box-format", choices=("xywh", "xyxy"), help="screenspot: the bbox layout (default xywh)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.input):
        parser.error(f"--input {args.input!r} is not a file")
    if "%" not in args.out:
        parser.error(f"--out needs a shard number placeholder such as %06d: {args.out!r}")
    options = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    accepted = inspect.signature(CONVERTERS[args.format]).parameters
    unknown = [name for name in options if name not in accepted]
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        parser.error(f"{args.format} takes no {flags}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    shards, counts = convert_to_shards(
        args.format, args.input, args.media_root, args.out, args.maxcount, args.image_ext, progress=True, **options
    )
    print(f"{args.format}: {counts.summary()}; {len(shards)} shards", file=sys.stderr)
    for reason, n in counts.skipped.most_common():
        print(f"  skipped {n:>8d}  {reason}", file=sys.stderr)
    if counts.written == 0:  # an empty tar would only stall a reader; leave nothing behind and fail
        for path in shards:
            os.remove(path)
        print("error: no sample could be written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
