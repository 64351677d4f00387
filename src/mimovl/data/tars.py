"""Reading shard tars into webdataset's raw samples, from any sample's byte offset, with every way a shard can fail
reported.

    for raw, after in read_shard("data/cap-000000.tar", 0, handler=counter):   # raw: {"__key__", ext: bytes, ...}
        ...                                  # `after`: the byte offset to go on reading from (None: the shard ended)
    held = read_at("data/cap-000000.tar", [0, 20480])                            # {offset: raw}, again

`wds.tarfile_to_samples` stops silently where tarfile does: a tar cut inside a member header, or ending without
tar's end-of-archive marker, looks like a complete shard, and the samples after the cut vanish without a word. It
also cannot start in the middle of a shard. This reader (webdataset's `tar_file_expander` and `group_by_keys`
written again, ~60 lines, for those two reasons) turns each failure into one `ShardError` per shard read, given
to `handler`, keeps every sample before the problem, and gives each sample the byte offset of its first header
(`__offset__`), so that a resumed stream reads a shard on from where it stopped and re-reads a held sample alone:

- a shard that cannot be opened, is zero bytes or is not a tar: ShardError, no samples;
- a shard cut inside a member's data: the samples before it, ShardError, then the cut sample marked with a member
  named TRUNCATED (so its decoder can count it as cut rather than as missing a member);
- a shard cut inside a header or between members, or garbage after a member: the samples before, ShardError.

A failure is reported after the samples before it are yielded: reading again from the offset given with the last
sample yielded meets (and reports) it once more, and nothing before it. Plain local tars are entered by seeking;
anything else (compressed, pipes, URLs) is read from its start to the offset, without keeping what is passed.
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


def read_shard(url: str, offset: int, handler: Callable[[Exception], bool]) -> Iterator[tuple[dict, int | None]]:
    """webdataset's raw samples ({"__key__", "__url__", "__offset__", ext: bytes}) of one shard, in order, from
    byte `offset` (0, or a sample's start), each with the offset where reading goes on after it (None: the shard
    ended with it). Every failure goes to `handler` as described above; one shard read gives at most one
    ShardError (a duplicate member is a ValueError of its own)."""
    try:
        stream = wds.gopen(url)
    except Exception as exn:
        handler(ShardError(f"shard {url}: cannot open: {_reason(exn)}"))
        return
    try:
        base = offset if _enter(stream, offset) else 0
        yield from _samples(stream, url, base, offset, handler)
    finally:
        stream.close()


def read_at(url: str, offsets: Iterable[int]) -> dict[int, dict]:
    """The raw samples that start at `offsets` in the shard at `url` ({offset: raw}, as `read_shard` gave them, a
    cut one marked TRUNCATED again); failures are not reported (they were, when the samples were first read), and
    an offset where no sample starts is left out."""
    wanted, found = set(offsets), {}
    if not wanted:
        return found
    ignore = lambda exn: True  # noqa: E731
    stream = wds.gopen(url)
    try:
        if _plain(stream):
            for offset in sorted(wanted):
                stream.seek(offset)
                samples = _samples(stream, url, offset, offset, ignore)
                raw = next(samples, (None, None))[0]
                samples.close()
                if raw is not None and raw["__offset__"] == offset:
                    found[offset] = raw
            return found
        for raw, _ in _samples(stream, url, 0, min(wanted), ignore):
            if raw["__offset__"] in wanted:
                found[raw["__offset__"]] = raw
                if len(found) == len(wanted):
                    break
        return found
    finally:
        stream.close()


def _enter(stream, offset: int) -> bool:
    """Seeks a plain tar to `offset`; False when it must be read from its start instead."""
    if offset and _plain(stream):
        stream.seek(offset)
        return True
    return False


def _plain(stream) -> bool:
    """A seekable, uncompressed tar (its first header carries tar's "ustar" magic), left at its start."""
    if not getattr(stream, "seekable", lambda: False)():
        return False
    head = stream.read(512)
    stream.seek(0)
    return head[257:262] == b"ustar"


def _samples(stream, url: str, base: int, start: int, handler: Callable[[Exception], bool]
             ) -> Iterator[tuple[dict, int | None]]:
    """The samples of a tar stream that begins at byte `base` of its shard, from those that start at `start` on
    (what comes before is passed over, its failures unreported); each with the offset after it."""
    group, end = None, base  # the sample being read; the offset after the last member read whole
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_WatchedHeader) as tar:
            for info in tar:
                key, ext = _key_of(info) if base + info.offset >= start else (None, None)
                if key is not None:
                    if group is not None and key != group["__key__"]:
                        yield group, end  # whole: the next sample has begun, and nothing of it is read yet
                        group = None
                    if group is None:
                        group = {"__key__": key, "__url__": url, "__offset__": base + info.offset}
                    try:
                        data = tar.extractfile(info).read()
                    except tarfile.ReadError as exn:
                        group[TRUNCATED] = b""
                        raise ShardError(f"cut inside member {info.name} ({exn})") from exn
                    if ext in group:
                        handler(ValueError(f"shard {url}: {info.name}: duplicate file name in the tar"))
                    else:
                        group[ext] = data
                end = base + tar.offset
                tar.members = []  # a stream reader keeps no index; webdataset does the same
            if not getattr(tar, "clean_end", False):  # set by _WatchedHeader (maybe already in tarfile.open)
                raise ShardError(f"ends after {end} bytes without tar's end-of-archive marker (cut short, or "
                                 f"garbage after the last member): the samples after it, if any, are lost")
    except Exception as exn:
        if group is not None and TRUNCATED not in group:
            yield group, end
            group = None
        reason = str(exn) if isinstance(exn, ShardError) else _reason(exn)
        handler(ShardError(f"shard {url}: {reason}"))
        if group is not None:
            yield group, None
        return
    if group is not None:
        yield group, None


def _key_of(info: tarfile.TarInfo) -> tuple[str | None, str | None]:
    """(key, lower-case extension) of a member webdataset would group, else (None, None)."""
    if not info.isreg() or _META.match(info.name):
        return None, None
    key, ext = wds.tariterators.base_plus_ext(info.name)
    return (key, ext.lower()) if key is not None else (None, None)


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
