"""The errors shared across nnlab's layers, in one place that imports nothing of nnlab.

Any module may raise or catch these without importing the module that happens to use them most (training,
the data cache, jobs), so the import graph stays acyclic.
"""

from __future__ import annotations


class Cancelled(RuntimeError):
    """Raised inside a long run when its cancel callback returns True."""
