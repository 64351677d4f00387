"""Writing a run's outputs so that a kill at any moment leaves the old version or the new one, never half of one.

    write_json(path, obj) / write_text(path, text)   one file: a temp file beside it, fsync, rename, fsync the dir
    atomic_directory(path)      a context yielding a temp directory beside `path`; on success it replaces `path`
    atomic_file(path)           a file written beside its target, fsynced and renamed over it (mimovl.fit.checkpoint
                                saves Lightning checkpoints with it)
    resume_point(path)          the checkpoint a run resumes from and its step; a UsageError when it is unreadable
    run_lock(output_dir)        one run at a time per output directory (<output_dir>/run.lock)

Temp files live beside their target, never in $TMPDIR: a rename within one filesystem is atomic, a "move" across
filesystems is a copy that a kill cuts short (the reason Lightning's own save could leave a 0-byte last.ckpt).
Temp names carry the writer's pid, so leftovers of a killed writer are removed by the next write of the same target.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, NamedTuple

import torch

from mimovl.errors import UsageError

LOCK_FILE = "run.lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import: os.umask can only be read by setting it


def write_text(path: str | Path, text: str) -> Path:
    """Writes `text` to `path` atomically; returns `path`."""
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Writes `obj` as indented JSON to `path` atomically; returns `path`. Strict JSON: a NaN or infinity raises
    ValueError instead of writing a file no JSON reader accepts."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """A file object to write `path`'s new contents into; `path` is replaced only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide a summary from the rest of a group
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yields an empty temp directory beside `path`; when the block succeeds its contents replace `path` whole
    (the old directory is removed), so a reader sees the old directory or the new one. When the block raises,
    `path` is untouched. An existing `path` must be empty or a model directory (config.json): this never deletes
    a directory of something else."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").exists():
        raise FileExistsError(f"{path} is not empty and is not a model directory (no config.json): "
                              "refusing to replace it; export into a new or empty directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~_UMASK)
        yield tmp
        _fsync_tree(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):  # tmp now holds the old directory
            shutil.rmtree(tmp)
        else:  # no atomic exchange on this filesystem: for a moment there is no `path` (never a partial one)
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
            os.replace(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


class Resume(NamedTuple):
    path: Path
    step: int


def resume_point(path: str | Path) -> Resume | None:
    """The checkpoint at `path` (a file, or a distributed checkpoint's directory) and its global step; None when
    there is none. A checkpoint that cannot be read (empty, truncated, not a checkpoint) is a UsageError naming
    the file and the fix, instead of the EOFError or zip error that loading it would give mid-setup."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        if path.is_dir():  # Lightning's distributed checkpoint: torch.distributed.checkpoint's .metadata + meta.pt
            if not (path / ".metadata").is_file():
                raise FileNotFoundError(f"no {path / '.metadata'}")
            path_of_state = path / "meta.pt"
        else:
            path_of_state = path
        # mmap: the tensors are mapped, not read, so checking a large checkpoint costs little memory or time.
        state = torch.load(path_of_state, map_location="cpu", mmap=True, weights_only=False)
        step = int(state["global_step"])
    except Exception as error:
        raise UsageError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {error}); it is probably left from a "
            f"save that was cut short. Delete it (rm -r {path}) to start this stage afresh, or run with "
            "resume=false") from error
    return Resume(path, step)


@contextmanager
def run_lock(output_dir: str | Path, rank: int = 0) -> Iterator[None]:
    """Holds <output_dir>/run.lock for the block, so a second run into the same directory stops at once with a
    UsageError naming the process holding it. The lock is the kernel's (flock): a killed run releases it, and the
    file left behind blocks nothing. Only rank zero locks (`rank`: this process's global rank); the other ranks
    of a run pass through."""
    if rank != 0:
        yield
        return
    path = Path(output_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:  # a+: opening must not erase the holder's name
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UsageError(f"{output_dir} is in use by another run ({holder}, holding {path}): wait for it to "
                             "finish or stop it, or give this run its own directory (run_name=NAME or "
                             "paths.output_dir=DIR)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield  # closing the file releases the lock


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _remove_stale(path: Path) -> None:
    """Removes temps a killed writer of `path` left (their pid is gone); a live writer's are kept."""
    for leftover in path.parent.glob(f".{path.name}.*.*.tmp"):
        pid = leftover.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with suppress(FileNotFoundError):
                    leftover.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    """Makes a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:  # some filesystems cannot fsync a directory; their renames are durable as they are
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            with open(Path(directory) / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(directory))


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one step (Linux renameat2 RENAME_EXCHANGE; no library offers it); False where the
    system or filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))
