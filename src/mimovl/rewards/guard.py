"""What keeps scoring from hurting the RL loop: model output must never crash it, stall it, or leak a bad value.

    @guarded
    def my_reward(response, answer) -> float: ...       # any exception -> 0.0, result a float in [0, 1]
                                                        # (keywords such as image_size= pass through)

    ok = bounded(check, gold, pred, timeout_s=3.0)      # check(gold, pred) -> bool, run in a forked child;
                                                        # False when it raises, dies or runs past the deadline

A batch of checks runs in long-lived workers instead, a deadline each and no fork per check
(mimovl.rewards.pool.CheckPool: the math rewards do so); `bounded` is for a check now and then.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)


def guarded(fn: Callable[..., float]) -> Callable[..., float]:
    """Wrap a verifier `(response, answer, **keywords) -> number` so it returns a Python float clamped to [0, 1].

    Any exception scores 0.0 and is logged at debug level (malformed model output is routine, not an error);
    NaN scores 0.0. KeyboardInterrupt and SystemExit pass through.
    """

    @functools.wraps(fn)
    def wrapper(response, answer, **keywords) -> float:
        try:
            value = float(fn(response, answer, **keywords))
        except Exception:
            log.debug("%s: scoring raised, reward 0", fn.__qualname__, exc_info=True)
            return 0.0
        if value != value:  # NaN
            return 0.0
        return min(max(value, 0.0), 1.0)

    return wrapper


def bounded(check: Callable[..., bool], *args, timeout_s: float) -> bool:
    """`check(*args)` run in a forked child process; False if it raises, dies, or is still running after
    `timeout_s` seconds (then it is killed).

    Why a process: a thread cannot be stopped, and signal-based timeouts (math-verify's) neither work off the
    main thread nor interrupt C code that holds the GIL (Python's big-integer arithmetic). A child can always
    be killed. Fork keeps it cheap (tens of ms: nothing is re-imported) and works from any thread; in the
    child the forking thread is the main thread and no interval timer is pending, so signal-based timeouts
    inside `check` work there too. The caller's signal handlers and timers are left alone.
    Where os.fork is missing, `check` runs in this process (unbounded off the main thread).
    """
    if not hasattr(os, "fork"):
        return bool(check(*args))
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # the child: answer one byte, then leave without running the parent's exit handlers
        try:
            os.close(read_fd)
            os.write(write_fd, b"1" if check(*args) else b"0")
        finally:
            os._exit(0)
    os.close(write_fd)
    answered = b""
    try:
        poller = select.poll()  # not select.select: a busy service may hold file descriptors above 1024
        poller.register(read_fd, select.POLLIN)
        if poller.poll(timeout_s * 1000):
            answered = os.read(read_fd, 1)  # b"" when the child died without answering
    finally:
        os.close(read_fd)
        _reap(pid, kill=not answered)  # also when interrupted: leave no running child or zombie behind
    return answered == b"1"


def _reap(pid: int, kill: bool) -> None:
    try:
        if kill:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass  # already gone, or reaped by the caller's own SIGCHLD handling
