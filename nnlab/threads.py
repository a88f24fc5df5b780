"""PyTorch's intra-op thread count: who may change it, and when.

``torch.set_num_threads`` is treated as process-wide (with the OpenMP backend it sets the calling thread's
count and the default of threads that start later; other backends are process-wide). The rule:

1. **A timed section** is what :data:`TIMING_LOCK` guards: :func:`nnlab.measure.interleaved_latency` holds it
   for one whole measurement (warm-up and rounds). Timed sections run one at a time, and while one runs only
   its own thread changes the thread count (its runners set theirs through :func:`torch_threads`).
2. **Everything else is untimed** (a page's forward pass, a job, a sweep piece with a fixed thread count, an
   eager runner called outside a measurement) and never holds :data:`TIMING_LOCK`: it never waits for a
   measurement, nor for another forward pass or piece, however long.
3. **The count is changed only under** ``_COUNT_LOCK``, held for the change alone (a few microseconds),
   never across work. An untimed :func:`torch_threads` that starts while another thread's timed section runs
   leaves the count as it is (the block runs at the current count, which it yields); one that ends then leaves
   its restore to the same thread's next :func:`torch_threads` call. So no measurement's count changes halfway.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch


class _TimingLock:
    """A re-entrant lock that also records which thread holds it (:data:`TIMING_LOCK`)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        global _timed_owner
        ok = self._lock.acquire(blocking, timeout)
        if ok:
            with _COUNT_LOCK:
                self._depth += 1
                _timed_owner = threading.get_ident()
        return ok

    def release(self) -> None:
        global _timed_owner
        with _COUNT_LOCK:
            self._depth -= 1
            if self._depth == 0:
                _timed_owner = None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_COUNT_LOCK = threading.Lock()
_timed_owner: int | None = None  # the thread inside a timed section (None: none runs)
_local = threading.local()       # .pending: the count this thread still has to return to (restore deferred)
TIMING_LOCK = _TimingLock()


def timed_section_elsewhere() -> bool:
    """True while another thread's timed section (holding :data:`TIMING_LOCK`) runs."""
    owner = _timed_owner
    return owner is not None and owner != threading.get_ident()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run a block with PyTorch's intra-op thread count set to ``threads`` (None: leave as is).

    Holds no lock across the block. Inside a timed section (this thread holds :data:`TIMING_LOCK`) or when none
    runs, the count is set and the previous one restored on exit; while another thread's timed section runs,
    the count is left alone (see the module's rule). Yields the count the block runs at.
    """
    with _COUNT_LOCK:
        free = not timed_section_elsewhere()
        pending = getattr(_local, "pending", None)
        if free and pending is not None:
            _local.pending = None
            if torch.get_num_threads() != pending:
                torch.set_num_threads(pending)
        old = torch.get_num_threads()
        n = int(threads or old) if free else old
        changed = n != old
        if changed:
            torch.set_num_threads(n)
    try:
        yield n
    finally:
        if changed:
            with _COUNT_LOCK:
                if timed_section_elsewhere():
                    _local.pending = old
                else:
                    _local.pending = None
                    if torch.get_num_threads() != old:
                        torch.set_num_threads(old)
