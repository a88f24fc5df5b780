"""PyTorch's process-wide thread count, changed only under one lock.

``torch.set_num_threads`` is process-wide: every block that changes it (a timed section of
:mod:`nnlab.measure`, an eager runner's call, a job piece with a fixed thread count) holds
:data:`TIMING_LOCK`, so two sessions or jobs never change each other's thread count halfway.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

TIMING_LOCK = threading.RLock()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run a block with PyTorch's intra-op thread count set to ``threads`` (None: leave as is).

    The block holds :data:`TIMING_LOCK`; the previous count is restored on exit. Yields the count.
    """
    with TIMING_LOCK:
        old = torch.get_num_threads()
        n = int(threads or old)
        if n != old:
            torch.set_num_threads(n)
        try:
            yield n
        finally:
            if torch.get_num_threads() != old:
                torch.set_num_threads(old)
