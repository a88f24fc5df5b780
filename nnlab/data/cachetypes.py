"""The data cache's shared types: slot codes, limits, its error and build statistics.

Both :mod:`nnlab.data.cache` (the cache) and :mod:`nnlab.data._cachebuild` (how a build runs) use these; keeping them
here lets the build module depend on them without importing the cache that calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nnlab.i18n import _

PENDING, UNREADABLE = -2, -1  # slot codes of list entries without pixels
SMALL_BUILD = 64  # with the default worker count, this few images decode in the calling process
DISK_MARGIN = 256 * 2**20  # leave this much free space
ProgressFn = Callable[..., None]
CancelFn = Callable[[], bool]


class DataCacheError(RuntimeError):
    """The cache cannot be built or read (disk full, incomplete, nothing readable), meant for the user."""


@dataclass
class BuildStats:
    """What one build did.

    Attributes:
        total: Images in the file list.
        reused: Images found in the cache with the same fingerprint (not decoded).
        decoded: Images decoded by this build (``decoded_paths``), readable or not.
        unreadable: ``(relpath, reason)`` of every image the cache could not use, earlier builds included.
        removed: Cache entries dropped because their file is no longer listed.
        resumed: True when this build continued an interrupted one (its committed slots are in ``reused``).
        seconds: Wall time of the build.
        workers: Decode processes used (0: decoded in the calling process).
        decoded_paths: Relative paths decoded by this build, in list order.
    """

    total: int = 0
    reused: int = 0
    decoded: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    removed: int = 0
    resumed: bool = False
    seconds: float = 0.0
    workers: int = 0
    decoded_paths: list[str] = field(default_factory=list)

    @property
    def ready(self) -> int:
        """Images with pixels in the cache."""
        return self.total - len(self.unreadable)

    def summary(self) -> str:
        bad = _("; {n:,} unreadable").format(n=len(self.unreadable)) if self.unreadable else ""
        return _("{ready:,} of {total:,} images cached ({decoded:,} decoded, {reused:,} reused{bad}) in {seconds:.1f} "
                 "s").format(ready=self.ready, total=self.total, decoded=self.decoded, reused=self.reused, bad=bad,
                            seconds=self.seconds)
