"""The data cache: every image of a source decoded once, with the model's pixel preprocessing, on disk.

A cache lives in ``<workspace>/datacache/<key>/``, where the key hashes the source's identity (its folder,
list file or array name) and :meth:`Preprocessing.pixel_key` (mean and std are applied on the fly, so models
that differ only there share a cache). It holds:

* ``pixels.u8`` — fixed-size slots of ``C×H×W`` uint8 pixels, one image each, written with ``os.pwrite`` by
  decode workers (:mod:`nnlab._cacheworker`), read with ``os.pread`` (:class:`nnlab.diskimages.DiskImages`);
* ``index.sqlite`` — per relative path: slot, fingerprint ``(size, stamp)`` of what was decoded, or why the
  file is unreadable. A row is committed only after the pixels it points to are fsynced, so a build killed
  at any moment restarts where it stopped and never trusts a half-written slot. A changed file gets a new
  slot (its old one is freed only by the commit that replaces it); a removed file's row is deleted first.
* ``build.lock`` — held by a build and its workers: one build at a time, and no stray worker of a killed
  build can write into slots a new build has reused.

Greyscale array sources (Fashion-MNIST, MNIST, digits) are stored with one channel even for a 3-channel
model; :meth:`Preprocessing.normalize` repeats it, exactly as ``convert("RGB")`` would.

Typical use (a job does the build, with its progress and cancel callbacks)::

    files = filelists.image_folder("/data/pets")
    cache = DataCache(files, model_preprocessing)
    stats = cache.build(progress=report, cancel=should_stop)   # fast no-op when nothing changed
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
import subprocess  # our own worker module, fixed arguments
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from nnlab import _cacheworker as worker
from nnlab.diskimages import DiskImages, batch_loader
from nnlab.filelists import FileList
from nnlab.preprocess import Preprocessing

FORMAT_VERSION = 1
PENDING, UNREADABLE = -2, -1  # slot codes of list entries without pixels
CHUNK = 16  # images per task sent to a worker
IN_FLIGHT = 2  # chunks queued per worker
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
        bad = f"; {len(self.unreadable):,} unreadable" if self.unreadable else ""
        return (f"{self.ready:,} of {self.total:,} images cached ({self.decoded:,} decoded, {self.reused:,} "
                f"reused{bad}) in {self.seconds:.1f} s")


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


class DataCache:
    """The on-disk cache of one file list under one pixel preprocessing.

    Args:
        files: The source's file list (:mod:`nnlab.filelists`).
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
        self.path = Path(workspace).expanduser().resolve() / "datacache" / self.key
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

    def positions(self, split: str) -> np.ndarray:
        """Positions in the file list of ``split``'s cached images (unreadable ones left out).

        Raises:
            DataCacheError: The cache is not complete (build it first).
        """
        s = self._table()
        pending = int((s == PENDING).sum())
        if pending:
            raise DataCacheError(f"the data cache of {self.files.source} is not complete: {pending:,} of "
                                 f"{len(s):,} images still to decode; build it first")
        idx = self.files.indices(split)
        return idx[s[idx] >= 0]

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

        See :func:`nnlab.diskimages.batch_loader`.
        """
        return batch_loader(self.images(split), self.labels(split), order=order, batch_size=batch_size,
                            num_workers=num_workers, **kwargs)

    # --- building ---------------------------------------------------------------------------------------

    def build(self, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
              workers: int | None = None, commit_seconds: float = 1.0) -> BuildStats:
        """Decode what is missing or changed, drop what is no longer listed; reuse everything else.

        Args:
            progress: ``progress(message, fraction)``, called a few times a second.
            cancel: Returns True to stop; what is decoded so far is committed, then
                :class:`nnlab.train.Cancelled` is raised (the next build resumes).
            workers: Decode processes (default: the CPU count up to 8, none for 64 images or fewer; 0
                decodes in this process).
            commit_seconds: How often decoded slots are fsynced and committed.

        Raises:
            DataCacheError: The disk is too small or cannot be written, or no image could be read.
            nnlab.train.Cancelled: ``cancel()`` returned True.
        """
        return _Build(self, progress, cancel, workers, commit_seconds).run()


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
            raise DataCacheError(f"the data cache {path.name} is being built; cancel the build first") from None
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


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class _Build:
    """One build: lock, diff against the index, decode the rest in workers, commit as slots land on disk."""

    def __init__(self, cache: DataCache, progress: ProgressFn | None, cancel: CancelFn | None,
                 workers: int | None, commit_seconds: float) -> None:
        self.cache, self.files = cache, cache.files
        self.progress = progress or (lambda *a, **k: None)
        self.cancel = cancel or (lambda: False)
        self.workers = workers if workers is not None else default_workers()
        self.auto_workers = workers is None
        self.commit_seconds = commit_seconds
        self.stats = BuildStats(total=len(cache.files))
        self.pending_rows: list[tuple[str, int, int, int, str | None]] = []
        self.last_commit = self.last_report = time.monotonic()
        self.done = 0
        self.todo = 0
        self.t0 = time.monotonic()

    # locking
    @contextlib.contextmanager
    def _lock(self) -> Iterator[int]:
        self.cache.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.cache.path / "build.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited:
                        self.progress("waiting for another build of this data cache to finish", 0.0)
                        waited = True
                    self._check_cancel()
                    time.sleep(0.1)
            yield fd
        finally:
            os.close(fd)  # releases the lock once the workers (sharing it) are gone too

    def _check_cancel(self) -> None:
        if self.cancel():
            from nnlab.train import Cancelled

            raise Cancelled("data cache build cancelled")

    def run(self) -> BuildStats:
        with self._lock() as lock_fd, contextlib.closing(self.cache._open_index()) as conn:
            self.conn = conn
            rows = self.cache._rows(conn)
            self.stats.resumed = conn.execute("SELECT 1 FROM meta WHERE key = 'interrupted'").fetchone() is not None
            assigned = self._prepare(rows)
            if assigned or self.pending_rows:  # cleared only when this build finishes
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('interrupted', '1')")
                conn.commit()
            try:
                self._decode(assigned, lock_fd)
            finally:
                self._commit(force=True)
            conn.execute("DELETE FROM meta WHERE key = 'interrupted'")
            rows = self.cache._rows(conn)
            self._shrink(rows)
            self.cache._slots = table = self.cache._resolve(rows)
            st = self.stats
            st.unreadable = [(rel, rows[rel][3] or "unreadable") for rel, code in zip(self.files.relpaths, table)
                             if code == UNREADABLE]
            st.seconds = time.monotonic() - self.t0
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_build', ?)",
                         (json.dumps({**asdict(st), "decoded_paths": st.decoded_paths[:100],
                                      "unreadable": st.unreadable[:100]}),))
            conn.commit()
        self.cache.last_build = st
        if st.ready == 0:
            first = "; ".join(f"{r}: {why}" for r, why in st.unreadable[:3])
            raise DataCacheError(f"none of the {st.total:,} images of {self.files.source} could be read ({first})")
        self.progress(st.summary(), 1.0)
        return st

    def _prepare(self, rows: dict) -> list[tuple[int, int]]:
        """Drop unlisted rows, find what to decode and give each a free slot: ``[(list position, slot)]``."""
        f, cache = self.files, self.cache
        listed = set(f.relpaths)
        gone = [rel for rel in rows if rel not in listed]
        if gone:  # committed before any slot is reused, so a reappearing file never trusts a reused slot
            self.conn.executemany("DELETE FROM items WHERE relpath = ?", ((r,) for r in gone))
            self.conn.commit()
            for r in gone:
                del rows[r]
        self.stats.removed = len(gone)
        table = cache._resolve(rows)
        todo = np.flatnonzero(table == PENDING)
        self.stats.reused = len(f) - len(todo)
        problems = dict(f.problems)
        decodable = []
        for i in todo:
            if f.sizes[i] < 0:  # listed but missing or not allowed: recorded without decoding
                self.pending_rows.append((f.relpaths[i], -1, -1, -1, problems.get(f.relpaths[i], "missing")))
            else:
                decodable.append(int(i))
        used = np.zeros(0, bool)
        in_use = [row[0] for row in rows.values() if row[0] >= 0]
        if in_use:
            used = np.zeros(max(in_use) + 1, bool)
            used[in_use] = True
        free = np.flatnonzero(~used)
        extra = len(decodable) - len(free)
        if extra > 0:
            free = np.concatenate([free, np.arange(len(used), len(used) + extra)])
        assigned = list(zip(decodable, free[:len(decodable)].tolist()))
        self._reserve(max((s for _, s in assigned), default=-1) + 1, len(assigned))
        return assigned

    def _reserve(self, slots_needed: int, new_images: int) -> None:
        """Grow the data file to hold ``slots_needed`` slots, after checking the free disk space."""
        path = self.cache.data_path
        need = new_images * self.cache.slot_bytes
        free = shutil.disk_usage(self.cache.path).free
        if need > free - DISK_MARGIN:
            raise DataCacheError(f"the data cache needs {need / 2**30:.1f} GiB more for {new_images:,} images; "
                                 f"{free / 2**30:.1f} GiB is free under {self.cache.path.parent}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < slots_needed * self.cache.slot_bytes:
                os.ftruncate(fd, slots_needed * self.cache.slot_bytes)
        finally:
            os.close(fd)

    def _shrink(self, rows: dict) -> None:
        """Cut free slots off the end of the data file (after removals)."""
        last = max((row[0] for row in rows.values() if row[0] >= 0), default=-1)
        size = (last + 1) * self.cache.slot_bytes
        with contextlib.suppress(OSError):
            if self.cache.data_path.stat().st_size > size:
                os.truncate(self.cache.data_path, size)

    # committing
    def _commit(self, force: bool = False) -> None:
        """fsync the pixels written so far, then commit their rows (in that order)."""
        now = time.monotonic()
        if not self.pending_rows or (not force and now - self.last_commit < self.commit_seconds):
            return
        fd = os.open(self.cache.data_path, os.O_RDWR)
        try:
            os.fsync(fd)  # every process's writes to the file, not only this descriptor's
        finally:
            os.close(fd)
        self.conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?)", self.pending_rows)
        self.conn.commit()
        self.pending_rows = []
        self.last_commit = now

    def _accept(self, results: list[tuple[int, str, int, int, str | None]], where: dict[int, int]) -> None:
        f = self.files
        for slot, rel, size, stamp, error in results:
            i = where.pop(slot)
            if f.kind == "arrays" or error is not None and size < 0:
                size, stamp = int(f.sizes[i]), int(f.stamps[i])  # arrays: the list's own fingerprint
            self.pending_rows.append((rel, slot if error is None else -1, size, stamp, error))
            self.stats.decoded_paths.append(rel)
        self.done += len(results)
        now = time.monotonic()
        if now - self.last_report >= 0.2:
            self.last_report = now
            rate = self.done / max(1e-6, now - self.t0)
            self.progress(f"decoding images: {self.done:,} / {self.todo:,} ({rate:,.0f} images/s)",
                          self.done / max(1, self.todo))
        self._commit()

    # decoding
    def _task(self, i: int, slot: int) -> tuple:
        f = self.files
        rel = f.relpaths[i]
        if f.arrays is not None:
            split, k = rel.rsplit("/", 1)
            a = f.arrays[split][int(k)]
            return (slot, rel, np.ascontiguousarray(a).tobytes(), tuple(a.shape))
        return (slot, rel)

    def _decode(self, assigned: list[tuple[int, int]], lock_fd: int) -> None:
        self.todo = self.stats.decoded = len(assigned)
        where = {slot: i for i, slot in assigned}
        chunks = deque(assigned[k:k + CHUNK] for k in range(0, len(assigned), CHUNK))
        ctx = worker.Context(str(self.cache.data_path), self.cache.slot_shape, self.cache.storage, self.files.root)
        if not chunks:
            return
        self.progress(f"decoding {len(assigned):,} images", 0.0)
        n = 0 if self.auto_workers and len(assigned) <= SMALL_BUILD else min(max(0, self.workers), len(chunks))
        self.stats.workers = n
        if n == 0:
            fd = os.open(ctx.data_path, os.O_WRONLY)
            try:
                while chunks:
                    self._check_cancel()
                    tasks = [self._task(i, s) for i, s in chunks.popleft()]
                    try:
                        self._accept(worker.decode_chunk(fd, tasks, ctx), where)
                    except worker.FatalWriteError as exc:
                        raise DataCacheError(str(exc)) from exc
            finally:
                os.close(fd)
        else:
            _Pool(self, ctx, n, lock_fd).run(chunks, where)
        decoded = set(self.stats.decoded_paths)
        self.stats.decoded_paths = [r for r in self.files.relpaths if r in decoded]  # list order


class _Worker:
    """One decode process and its pipes."""

    def __init__(self, ctx: worker.Context, lock_fd: int) -> None:
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "nnlab._cacheworker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, pass_fds=(lock_fd,), cwd=pkg_root)
        self.outbox = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self.inbox = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.in_flight: deque[list[tuple[int, int]]] = deque()
        self.outbox.send(ctx.to_message())

    def stop(self, kill: bool = False) -> None:
        with contextlib.suppress(OSError):
            if not kill:
                self.outbox.send(None)
        for c in (self.outbox, self.inbox):
            with contextlib.suppress(OSError):
                c.close()
        if kill:
            with contextlib.suppress(OSError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Pool:
    """Workers fed chunk by chunk; a worker that dies has its chunks retried one image at a time."""

    def __init__(self, build: _Build, ctx: worker.Context, n: int, lock_fd: int) -> None:
        self.build, self.ctx, self.n, self.lock_fd = build, ctx, n, lock_fd
        self.deaths = 0

    def run(self, chunks: deque, where: dict[int, int]) -> None:
        build = self.build
        workers = [_Worker(self.ctx, self.lock_fd) for _ in range(self.n)]
        retry_alone: set[int] = set()  # slots retried alone after a crash; a second crash marks them unreadable
        try:
            while chunks or any(w.in_flight for w in workers):
                build._check_cancel()
                for k, w in enumerate(workers):
                    while chunks and len(w.in_flight) < IN_FLIGHT:
                        w.in_flight.append(chunks.popleft())
                        try:
                            w.outbox.send([build._task(i, s) for i, s in w.in_flight[-1]])
                        except OSError:  # it died; wait() below sees the closed pipe
                            break
                ready = wait([w.inbox for w in workers if w.in_flight], timeout=0.2)
                for k, w in enumerate(workers):
                    if w.inbox not in ready:
                        continue
                    try:
                        reply = w.inbox.recv()
                    except (EOFError, OSError):
                        workers[k] = self._replace(w, chunks, retry_alone, where)
                        continue
                    if isinstance(reply, tuple) and reply[:1] == ("fatal",):
                        raise DataCacheError(reply[1])
                    w.in_flight.popleft()
                    build._accept(reply, where)
        finally:
            unfinished = bool(chunks) or any(w.in_flight for w in workers)
            for w in workers:
                w.stop(kill=unfinished)

    def _replace(self, dead: _Worker, chunks: deque, retry_alone: set[int], where: dict[int, int]) -> _Worker:
        """A worker died (a decoder crash, or killed): retry its images one by one in a fresh worker."""
        dead.stop(kill=True)
        self.deaths += 1
        if self.deaths > 4 * self.n + 16:
            raise DataCacheError(f"decode workers keep dying ({self.deaths} so far, exit code {dead.proc.returncode})")
        crashed = []
        for chunk in dead.in_flight:
            for i, slot in chunk:
                if len(chunk) == 1 and slot in retry_alone:
                    crashed.append((slot, self.build.files.relpaths[i], -1, -1,
                                    f"the decoder crashed on this file (exit code {dead.proc.returncode})"))
                else:
                    retry_alone.add(slot)
                    chunks.appendleft([(i, slot)])
        if crashed:
            self.build._accept(crashed, where)
        return _Worker(self.ctx, self.lock_fd)
