"""Building a data cache: lock, diff the file list against the index, decode the rest in worker processes.

The protocol that makes a build safe to kill at any moment (see :mod:`nnlab.data.cache` for the layout):

1. rows of files no longer listed are deleted and committed first, so their slots can be reused;
2. every image to decode gets a slot no committed row uses (a changed file gets a new one: its old slot is
   freed only by the commit that replaces its row);
3. workers (:mod:`nnlab.data._cacheworker`, separate processes without torch) decode and ``pwrite`` the slots and
   report back; every ``commit_seconds`` the parent fsyncs the data file, then commits the rows of what was
   reported. Rows are never ahead of the bytes they point to.

A worker that dies (killed, or a decoder crash) is replaced and its images retried one at a time; an image
that kills a worker twice is listed as unreadable. Workers share the build lock's file description, so the
lock is free only once the parent and every worker are gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess  # our own worker module, fixed arguments
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from nnlab.data import _cacheworker as worker
from nnlab.data.cachetypes import (
    DISK_MARGIN,
    PENDING,
    SMALL_BUILD,
    UNREADABLE,
    BuildStats,
    CancelFn,
    DataCacheError,
    ProgressFn,
)

CHUNK = 16  # images per task sent to a worker
IN_FLIGHT = 2  # chunks queued per worker


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class Build:
    """One build: lock, diff against the index, decode the rest in workers, commit as slots land on disk."""

    def __init__(self, cache: Any, progress: ProgressFn | None, cancel: CancelFn | None,
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
            from nnlab.errors import Cancelled

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
        pkg_root = str(Path(__file__).resolve().parents[2])  # the project root (nnlab/data/_cachebuild.py)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "nnlab.data._cacheworker"], stdin=subprocess.PIPE,
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

    def __init__(self, build: Build, ctx: worker.Context, n: int, lock_fd: int) -> None:
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
