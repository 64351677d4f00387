"""Reading shard tars into webdataset's raw samples, with every way a shard can fail reported.

    samples = tar_samples(wds.SimpleShardList(urls), handler=counter)   # dicts of member bytes, like webdataset's

`wds.tarfile_to_samples` stops silently where tarfile does: a tar cut inside a member header, or ending without
tar's end-of-archive marker, looks like a complete shard, and the samples after the cut vanish without a word.
This reader (webdataset's `tar_file_expander` written again, ~30 lines, for that one reason) turns each
of those into one `ShardError` per shard read, given to `handler`, and keeps every sample before the problem:

- a shard that cannot be opened, is zero bytes or is not a tar: ShardError, no samples;
- a shard cut inside a member's data: the samples before it, the cut sample marked with a member named
  TRUNCATED (so its decoder can count it as cut rather than as missing a member), then ShardError;
- a shard cut inside a header or between members, or garbage after a member: the samples before, ShardError.
"""

import re
import tarfile
from collections.abc import Callable, Iterable, Iterator

import webdataset as wds

# The extension of the empty member added to a sample whose member was cut off by a truncated shard.
TRUNCATED = "__truncated__"
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, skipped as webdataset skips them


class ShardError(OSError):
    """A shard that could not be opened or read to its end-of-archive marker; the message names its URL."""


def tar_samples(shards: Iterable[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """webdataset's raw samples ({"__key__", "__url__", ext: bytes}) from shards ({"url": ...}), in order.

    Every failure, of opening a shard, reading it or grouping its members, goes to `handler` (webdataset's
    convention: it returns True to go on, False to stop); one shard read gives at most one ShardError.
    """
    streams = wds.tariterators.url_opener(
        shards, handler=lambda exn: handler(ShardError(f"shard {exn.args[-1]}: cannot open: {_reason(exn)}")))
    return wds.tariterators.group_by_keys(_members(streams, handler), handler=handler)


def _members(streams: Iterable[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    for source in streams:
        url, stream = source["url"], source["stream"]
        try:
            yield from _read_tar(stream, url)
        except Exception as exn:
            reason = str(exn) if isinstance(exn, ShardError) else _reason(exn)
            if not handler(ShardError(f"shard {url}: {reason}")):
                return
        finally:
            stream.close()
        yield {}  # webdataset's end-of-shard marker: no sample spans two shards


def _read_tar(stream, url: str) -> Iterator[dict]:
    with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_WatchedHeader) as tar:
        for info in tar:
            if not info.isreg() or _META.match(info.name):
                continue
            try:
                data = tar.extractfile(info).read()
            except tarfile.ReadError as exn:
                key, _ = wds.tariterators.base_plus_ext(info.name)
                if key is not None:
                    yield {"fname": f"{key}.{TRUNCATED}", "data": b"", "__url__": url}
                raise ShardError(f"cut inside member {info.name} ({exn})") from exn
            yield {"fname": info.name, "data": data, "__url__": url}
            tar.members = []  # a stream reader keeps no index; webdataset does the same
        if not getattr(tar, "clean_end", False):  # set by _WatchedHeader (maybe already in tarfile.open)
            raise ShardError(f"ends after {tar.offset} bytes without tar's end-of-archive marker (cut short, or "
                             f"garbage after the last member): the samples after it, if any, are lost")


class _WatchedHeader(tarfile.TarInfo):
    """Notes on the tar when its end-of-archive marker is read: tarfile ends the member list the same silent way
    there and at a header cut short, empty or garbled."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar.clean_end = True
            raise


def _reason(exn: Exception) -> str:
    return f"{type(exn).__name__}: {exn}"
