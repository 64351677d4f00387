"""Long-lived worker processes for the checks that must be isolated from the caller (math-verify can hang in
big-integer arithmetic or blow up): each check runs under its own deadline, and a worker that passes it is
killed and replaced, so a batch pays no fork per check.

    pool = CheckPool(warm=warm_up)                          # mimovl.rewards.mathverify.CHECKS is one
    pool.start()                                            # optional, returns at once: workers warm meanwhile
    pool.run(check, [(gold, pred), ...], timeout_s=3.0)     # [bool]: False where it raised, died or ran past

The pool is pebble.ProcessPool (deadlines, killing and replacing workers are its own). Workers are forked from
a clean forkserver process, never from the caller, so a caller with threads (a vLLM engine, loggers) or CUDA is
safe at any moment, a replacement after a kill included. Each worker runs `warm` once at its start.
A worker re-runs the caller's entry script (`python src/run.py`; multiprocessing's rule for forkserver and
spawn), so the forkserver first imports what that script imports (`entry_imports`): then the re-run is free, and
the workers share those modules' memory with the forkserver instead of each importing torch (measured under a
script importing mimovl.cli, on a loaded 2-core machine: a first answer after 8 s, not 18 s, and 0.33 GB
resident a worker, mostly shared, not 0.54 GB). `close()` stops the workers; it also runs at exit.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable

from pebble import ProcessPool

log = logging.getLogger(__name__)

WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
START_S = 60.0  # how long a batch may wait for workers to start (or restart) before its checks score False
# what the forkserver imports once, so that a worker, forked from it, starts in milliseconds ("__main__" is
# multiprocessing's own default)
PRELOAD = ["__main__", "math_verify", "mimovl.rewards.mathverify"]


class CheckPool:
    """Worker processes that run `check(*args) -> bool` calls, each bounded by its own deadline.

    Args:
        workers: processes; the checks of a batch run this many at a time.
        warm: run once in each worker as it starts (a module-level function: workers import it by name).
    """

    def __init__(self, workers: int = WORKERS, warm: Callable[[], None] | None = None):
        self.workers, self.warm = workers, warm
        self._pool: ProcessPool | None = None
        self._pid = None  # the process that started _pool: a forked child must start its own
        self._lock = threading.Lock()
        atexit.register(self.close)

    def start(self) -> None:
        """Starts the workers if they are not running, in the background: returns at once, and a `run` meanwhile
        waits for them."""
        threading.Thread(target=self._live, name="reward-check-pool-start", daemon=True).start()

    def run(self, check: Callable[..., bool], calls: list[tuple], timeout_s: float) -> list[bool]:
        """`bool(check(*args))` for each args of `calls`, in order; False for a call that raises, kills its
        worker, or runs past `timeout_s` seconds once started (its worker is then killed and replaced).

        Never raises; returns within START_S + timeout_s * ceil(len(calls) / workers) seconds (and after
        START_S once for workers that cannot start at all: then everything is False, with a logged error).
        """
        if not calls:
            return []
        deadline = time.monotonic() + START_S + timeout_s * math.ceil(len(calls) / self.workers)
        try:
            pool = self._live()
            futures = [pool.schedule(check, args=args, timeout=timeout_s) for args in calls]
        except Exception:
            log.error("the reward check pool failed; scoring the batch 0", exc_info=True)
            return [False] * len(calls)
        concurrent.futures.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        late = [f for f in futures if not f.done()]
        if late:
            log.error("%d of %d reward checks did not finish in time (are the workers starting?); scoring them 0",
                      len(late), len(calls))
            for future in late:
                future.cancel()
        return [_verdict(f) for f in futures]

    def close(self) -> None:
        """Stops the workers (a running check is killed); a later `run` or `start` starts new ones."""
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None and self._pid == os.getpid():
                pool.stop()
                pool.join()

    def __enter__(self) -> CheckPool:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _live(self) -> ProcessPool:
        with self._lock:
            if self._pool is None or self._pid != os.getpid() or not self._pool.active:
                if self._pool is not None and self._pid == os.getpid():
                    self._pool.stop()  # broken (all workers died at once): replace it
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(PRELOAD + entry_imports())  # before the forkserver's first start
                self._pool = ProcessPool(max_workers=self.workers, initializer=_start_worker,
                                         initargs=(self.warm,), context=context)
                self._pid = os.getpid()
                self._pool.schedule(_ready)  # pebble starts its workers at the first task
            return self._pool


def entry_imports() -> list[str]:
    """The modules the entry script (`__main__`) imported, by the names it holds: modules, and the modules of
    its functions and classes (`from mimovl.cli import launch` gives mimovl.cli)."""
    main = sys.modules.get("__main__")
    names = set()
    for value in list(vars(main).values()) if main is not None else []:
        try:
            name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        except Exception:  # an object whose attributes raise: not an import
            continue
        if isinstance(name, str) and name in sys.modules and name not in ("__main__", "__mp_main__"):
            names.add(name)
    return sorted(names)


def _verdict(future: concurrent.futures.Future) -> bool:
    if future.cancelled():
        return False
    error = future.exception()
    if error is not None:
        log.debug("a reward check failed (%r); reward 0", error)
        return False
    return bool(future.result())


def _start_worker(warm: Callable[[], None] | None) -> None:
    # pebble stops a worker past its deadline with SIGTERM, whose Python handler cannot run while C code holds
    # the GIL (big-integer arithmetic): it then waits 3 s before SIGKILL. The default action ends it at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if warm is not None:
        warm()


def _ready() -> bool:
    return True
