"""The data cache: every image of a source decoded once, with the model's pixel preprocessing, on disk.

A cache lives in ``<workspace>/datacache/<key>/``, where the key hashes the source's identity (its folder,
list file or array name) and :meth:`Preprocessing.pixel_key` (mean and std are applied on the fly, so models
that differ only there share a cache). It holds:

* ``pixels.u8`` — fixed-size slots of ``C×H×W`` uint8 pixels, one image each, written with ``os.pwrite`` by
  decode workers (:mod:`nnlab.data._cacheworker`), read with ``os.pread`` (:class:`nnlab.data.diskimages.DiskImages`);
* ``index.sqlite`` — per relative path: slot, fingerprint ``(size, stamp)`` of what was decoded, or why the
  file is unreadable. A row is committed only after the pixels it points to are fsynced, so a build killed
  at any moment restarts where it stopped and never trusts a half-written slot. A changed file gets a new
  slot (its old one is freed only by the commit that replaces it); a removed file's row is deleted first.
* ``build.lock`` — held by a build (:mod:`nnlab.data._cachebuild`) and its workers: one build at a time, and no
  stray worker of a killed build can write into slots a new build has reused.

Greyscale array sources (Fashion-MNIST, MNIST, digits) are stored with one channel even for a 3-channel
model; :meth:`Preprocessing.normalize` repeats it, exactly as ``convert("RGB")`` would.

Typical use (a job does the build, with its progress and cancel callbacks)::

    files = filelists.image_folder("/data/pets")
    cache = DataCache(files, model_preprocessing)
    stats = cache.build(progress=ctx.progress, cancel=ctx.cancelled)  # quick when nothing changed
    x, y = cache.images("train"), cache.labels("train")         # DiskImages, int64 labels
    for xb, yb, idx in cache.loader("val", batch_size=128): ...
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nnlab.data.cachetypes import (  # noqa: F401 - part of this module's interface
    DISK_MARGIN,
    PENDING,
    SMALL_BUILD,
    UNREADABLE,
    BuildStats,
    CancelFn,
    DataCacheError,
    ProgressFn,
)
from nnlab.data.diskimages import DiskImages, batch_loader
from nnlab.data.filelists import FileList
from nnlab.data.preprocess import Preprocessing
from nnlab.i18n import _

FORMAT_VERSION = 1
@dataclass
class CacheStatus:
    """Where a cache stands against its file list, without building anything."""

    total: int
    ready: int
    unreadable: int
    pending: int

    @property
    def complete(self) -> bool:
        return self.pending == 0 and self.ready > 0


def storage_preprocessing(files: FileList, pre: Preprocessing) -> Preprocessing:
    """The pixel preprocessing the cache applies: ``pre``, with one channel for a greyscale source."""
    if files.channels == 1 and pre.channels == 3:
        return replace(pre, channels=1, mean=pre.mean[:1], std=pre.std[:1])
    return pre


def cache_key(files: FileList, pre: Preprocessing) -> str:
    """The folder name of a cache: source identity + pixel preprocessing + format version."""
    text = f"{FORMAT_VERSION}|{files.identity()}|{storage_preprocessing(files, pre).pixel_key()}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _writable_dir(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(d, os.W_OK | os.X_OK)


def _cache_root(workspace: Path) -> Path:
    """``<workspace>/datacache``, or a per-user folder in the temporary directory when the workspace cannot be
    written (a read-only workspace still shows its models; the cache is rebuilt there once)."""
    d = workspace / "datacache"
    if _writable_dir(d):
        return d
    import tempfile

    fallback = Path(tempfile.gettempdir()) / f"nnlab-datacache-{os.getuid()}" / hashlib.sha1(
        str(workspace).encode()).hexdigest()[:12]
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


class DataCache:
    """The on-disk cache of one file list under one pixel preprocessing.

    Args:
        files: The source's file list (:mod:`nnlab.data.filelists`).
        preprocessing: The model's preprocessing (only its pixel half decides what is cached).
        workspace: The workspace root (default: ``nnlab.config.workspace_dir()``).
    """

    def __init__(self, files: FileList, preprocessing: Preprocessing, workspace: str | os.PathLike | None = None):
        if workspace is None:
            from nnlab import config

            workspace = config.workspace_dir()
        self.files = files
        self.preprocessing = preprocessing
        self.storage = storage_preprocessing(files, preprocessing)
        self.key = cache_key(files, preprocessing)
        self.path = _cache_root(Path(workspace).expanduser().resolve()) / self.key
        self.slot_shape: tuple[int, int, int] = self.storage.input_shape
        self.slot_bytes = int(np.prod(self.slot_shape))
        self.last_build: BuildStats | None = None
        self._slots: np.ndarray | None = None  # per list entry: slot, PENDING or UNREADABLE

    # --- paths and the index --------------------------------------------------------------------------

    @property
    def data_path(self) -> Path:
        return self.path / "pixels.u8"

    def _connect(self) -> sqlite3.Connection:
        self.path.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path / "index.sqlite", timeout=60)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE IF NOT EXISTS items (relpath TEXT PRIMARY KEY, slot INTEGER NOT NULL, "
                         "size INTEGER NOT NULL, stamp INTEGER NOT NULL, error TEXT)")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.commit()
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def _rows(self, conn: sqlite3.Connection) -> dict[str, tuple[int, int, int, str | None]]:
        return {r[0]: r[1:] for r in conn.execute("SELECT relpath, slot, size, stamp, error FROM items")}

    def _check_meta(self, conn: sqlite3.Connection) -> None:
        """Write the cache's description on first use; reset a cache whose layout differs."""
        want = {"version": str(FORMAT_VERSION), "slot_shape": json.dumps(list(self.slot_shape))}
        have = dict(conn.execute("SELECT key, value FROM meta"))
        if any(have.get(k) not in (None, v) for k, v in want.items()):
            conn.execute("DELETE FROM items")
            conn.execute("DELETE FROM meta")
            have = {}
        if not have:
            meta = {**want, "source": self.files.source, "kind": self.files.kind,
                    "preprocessing": json.dumps(self.storage.to_dict())}
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
        conn.commit()

    def _open_index(self) -> sqlite3.Connection:
        """The index, created when missing; an index that cannot be read is set aside and started afresh."""
        try:
            conn = self._connect()
            self._check_meta(conn)
            return conn
        except sqlite3.DatabaseError:  # every slot becomes free; the pixels are decoded again
            for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / name)
            conn = self._connect()
            self._check_meta(conn)
            return conn

    # --- where the list stands ------------------------------------------------------------------------

    def _resolve(self, rows: dict[str, tuple[int, int, int, str | None]]) -> np.ndarray:
        """Per list entry: its slot when the cached fingerprint matches, UNREADABLE, or PENDING."""
        f = self.files
        out = np.full(len(f), PENDING, np.int64)
        for i, rel in enumerate(f.relpaths):
            row = rows.get(rel)
            if row is not None and row[1] == f.sizes[i] and row[2] == f.stamps[i]:
                out[i] = UNREADABLE if row[3] is not None else row[0]
        return out

    def _table(self) -> np.ndarray:
        if self._slots is None:
            if not (self.path / "index.sqlite").is_file():
                return np.full(len(self.files), PENDING, np.int64)
            try:
                with contextlib.closing(self._connect()) as conn:
                    self._slots = self._resolve(self._rows(conn))
            except sqlite3.DatabaseError:
                return np.full(len(self.files), PENDING, np.int64)
        return self._slots

    def status(self) -> CacheStatus:
        """How many list entries are cached, unreadable, or still to decode (reads the index)."""
        self._slots = None
        s = self._table()
        return CacheStatus(total=len(s), ready=int((s >= 0).sum()), unreadable=int((s == UNREADABLE).sum()),
                           pending=int((s == PENDING).sum()))

    def unreadable(self) -> list[tuple[str, str]]:
        """``(relpath, reason)`` of every listed image the cache could not use."""
        bad = {rel: why for rel, why in self.files.problems}
        if (self.path / "index.sqlite").is_file():
            with contextlib.closing(self._connect()) as conn:
                rows = dict(conn.execute("SELECT relpath, error FROM items WHERE error IS NOT NULL"))
            bad.update(rows)
        s = self._table()
        return [(rel, bad.get(rel, "unreadable")) for rel, code in zip(self.files.relpaths, s) if code == UNREADABLE]

    # --- reading --------------------------------------------------------------------------------------

    def _complete_table(self) -> np.ndarray:
        """The slot table, or :class:`DataCacheError` while some images are still to decode."""
        s = self._table()
        pending = int((s == PENDING).sum())
        if pending:
            raise DataCacheError(_("the data cache of {source} is not complete: {pending:,} of {n_s:,} images still "
                                   "to decode; build it first").format(
                source=self.files.source, pending=pending, n_s=len(s)))
        return s

    def positions(self, split: str) -> np.ndarray:
        """Positions in the file list of ``split``'s cached images (unreadable ones left out).

        Raises:
            DataCacheError: The cache is not complete (build it first).
        """
        s = self._complete_table()
        idx = self.files.indices(split)
        return idx[s[idx] >= 0]

    def readable_mask(self) -> np.ndarray:
        """Per list entry: True when its image is cached (False: unreadable).

        Raises:
            DataCacheError: The cache is not complete (build it first).
        """
        s = self._complete_table()
        return s >= 0

    def images_at(self, positions: np.ndarray) -> DiskImages:
        """The cached images of these list positions (all must be readable), in that order."""
        slots = self._table()[np.asarray(positions, dtype=np.int64)]
        if (slots < 0).any():
            raise DataCacheError(_("some of the requested images are not cached"))
        return DiskImages(self.data_path, self.slot_shape, slots)

    def images(self, split: str) -> DiskImages:
        """``split``'s uint8 ``N×C×H×W`` images, read from disk on demand (bounded memory)."""
        return DiskImages(self.data_path, self.slot_shape, self._table()[self.positions(split)])

    def labels(self, split: str) -> np.ndarray:
        """``split``'s int64 labels, aligned with :meth:`images`."""
        return self.files.labels[self.positions(split)]

    def paths(self, split: str) -> list[str]:
        """``split``'s relative paths, aligned with :meth:`images`."""
        return [self.files.relpaths[i] for i in self.positions(split)]

    def loader(self, split: str, batch_size: int = 256, order: np.ndarray | None = None, num_workers: int = 2,
               **kwargs):
        """A DataLoader of ``(uint8 images, int64 labels, int64 indices)`` batches of ``split``, in ``order``.

        See :func:`nnlab.data.diskimages.batch_loader`.
        """
        return batch_loader(self.images(split), self.labels(split), order=order, batch_size=batch_size,
                            num_workers=num_workers, **kwargs)

    # --- building ---------------------------------------------------------------------------------------

    def build(self, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
              workers: int | None = None, commit_seconds: float = 1.0, use_ray: bool | None = None) -> BuildStats:
        """Decode what is missing or changed, drop what is no longer listed; reuse everything else.

        The images are decoded in shards (see :mod:`nnlab.data._cachebuild`): as Ray tasks through
        :func:`nnlab.jobs.pieces.map_tasks` when Ray is on, else in decode processes, or in this process.

        Args:
            progress: ``progress(message, fraction)``, called a few times a second.
            cancel: Returns True to stop; what is decoded so far is committed, then
                :class:`nnlab.train.Cancelled` is raised (the next build resumes).
            workers: Decode processes when Ray is off (default: the CPU count up to 8, none for 64 images or
                fewer; 0 decodes in this process, Ray or not). On Ray, the cluster's CPUs decide.
            commit_seconds: How often decoded slots are fsynced and committed (on Ray: about how long a wave of
                shards takes; each wave is committed).
            use_ray: True: Ray tasks; False: no Ray; None: Ray when a cluster is named (``NNLAB_RAY_ADDRESS``)
                and not ``NNLAB_RAY=0``, else the local decode pool (it starts at once and holds no torch).

        Raises:
            DataCacheError: The disk is too small or cannot be written, or no image could be read.
            nnlab.train.Cancelled: ``cancel()`` returned True.
        """
        from nnlab.data._cachebuild import Build

        return Build(self, progress, cancel, workers, commit_seconds, use_ray).run()


def list_caches(workspace: str | os.PathLike | None = None) -> list[dict]:
    """Every data cache of a workspace: key, source, pixel preprocessing, images, bytes on disk (largest first)."""
    if workspace is None:
        from nnlab import config

        workspace = config.workspace_dir()
    out = []
    base = Path(workspace) / "datacache"
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        index = d / "index.sqlite"
        if d.name.startswith(".") or not index.is_file():
            continue
        try:
            with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5)) as conn:
                meta = dict(conn.execute("SELECT key, value FROM meta"))
                images = conn.execute("SELECT count(*) FROM items WHERE error IS NULL").fetchone()[0]
        except sqlite3.Error:
            meta, images = {}, 0
        size = sum(f.stat().st_blocks * 512 for f in d.iterdir() if f.is_file())
        out.append({"key": d.name, "path": str(d), "source": meta.get("source", "?"), "images": images,
                    "preprocessing": json.loads(meta.get("preprocessing", "{}")), "bytes": size})
    return sorted(out, key=lambda c: -c["bytes"])


def remove_cache(path: str | os.PathLike) -> None:
    """Delete a data cache folder (refused while a build of it runs).

    Raises:
        DataCacheError: A build holds the cache.
    """
    path = Path(path)
    if not (path / "build.lock").is_file():
        shutil.rmtree(path, ignore_errors=True)
        return
    fd = os.open(path / "build.lock", os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataCacheError(_("the data cache {name} is being built; cancel the build first").format(
                name=path.name)) from None
        trash = path.with_name(f".deleted-{path.name}-{time.monotonic_ns()}")
        os.replace(path, trash)  # the cache disappears at once
    finally:
        os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)


def build_cache(files: FileList, preprocessing: Preprocessing, workspace: str | os.PathLike | None = None,
                **build_options) -> DataCache:
    """Open the cache of ``files`` under ``preprocessing`` and bring it up to date; ``last_build`` says how."""
    cache = DataCache(files, preprocessing, workspace)
    cache.build(**build_options)
    return cache
