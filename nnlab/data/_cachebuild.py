"""Building a data cache: lock, diff the file list against the index, decode the rest in pieces of work.

The protocol that makes a build safe to kill at any moment (see :mod:`nnlab.data.cache` for the layout):

1. rows of files no longer listed are deleted and committed first, so their slots can be reused;
2. every image to decode gets a slot no committed row uses (a changed file gets a new one: its old slot is
   freed only by the commit that replaces its row);
3. the images are cut into shards of :data:`CHUNK`; whoever decodes a shard writes its slots (``pwrite``) and reports
   the rows back; the parent fsyncs the data file, then commits the rows of what was reported. Rows are never
   ahead of the bytes they point to.

Who decodes the shards:

* **Ray tasks**, when asked for or when a cluster is named (``NNLAB_RAY_ADDRESS``) and Ray is on
  (:func:`nnlab.jobs.pieces.executor`): each shard is a piece of
  :func:`nnlab.jobs.pieces.map_tasks` (:func:`nnlab.data._cacheworker.decode_piece`), like a sweep's measurements, with
  its progress, cancel and retry. The shards go a wave at a time, sized so that a wave takes about
  ``commit_seconds``, and each wave is committed when it ends. The cache folder and the source must be at the same
  path on every node (the local Ray always is).
* **The calling thread**, for ``workers=0`` and small builds: the same pieces through ``map_tasks`` in-process.
* **Decode processes** (:mod:`nnlab.data._cacheworker`, separate processes without torch) when Ray is off, or
  inside a Ray task (which must not wait for tasks of its own): the in-process executor of large builds. It stays
  because ``map_tasks`` in-process (the calling thread, one piece after another) would lose what it gives: several
  cores, a decoder crash that does not take the caller down, and rows committed as they land (every
  ``commit_seconds``) instead of per wave.

A lost worker is never the image's fault the first time: a decode process that dies (killed, or a decoder crash)
is replaced and its images retried one at a time, and a shard whose Ray worker is lost (after Ray's own retry) is
split the same way; an image that is lost again alone is listed as unreadable. Decode processes share the build
lock's file description, so the lock is free only once the parent and every worker are gone; a Ray task checks
before each image that its build still holds the cache (:data:`nnlab.data._cacheworker.TOKEN`).
"""

from __future__ import annotations

import base64
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
from nnlab.errors import Cancelled
from nnlab.i18n import _
from nnlab.jobs.engine import executor, map_tasks, ray_address

CHUNK = 16  # images per task sent to a worker (a shard, a piece of map_tasks)
IN_FLIGHT = 2  # chunks queued per worker
WAVE_MAX = 64  # a wave of map_tasks holds at most this many pieces per parallel slot


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class Build:
    """One build: lock, diff against the index, decode the rest in workers, commit as slots land on disk."""

    def __init__(self, cache: Any, progress: ProgressFn | None, cancel: CancelFn | None,
                 workers: int | None, commit_seconds: float, use_ray: bool | None = None) -> None:
        self.cache, self.files = cache, cache.files
        self.progress = progress or (lambda *a, **k: None)
        self.cancel = cancel or (lambda: False)
        self.workers = workers if workers is not None else default_workers()
        self.auto_workers = workers is None
        self.commit_seconds = commit_seconds
        # Ray only where it was asked for, or a cluster is named: a local build's first Ray start costs seconds
        # and its workers hold torch, while the decode pool starts at once without it
        self.use_ray = use_ray if use_ray is not None else (None if ray_address() else False)
        self.token = os.urandom(8).hex()
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
                        self.progress(_("waiting for another build of this data cache to finish"), 0.0)
                        waited = True
                    self._check_cancel()
                    time.sleep(0.1)
            yield fd
        finally:
            os.close(fd)  # releases the lock once the workers (sharing it) are gone too

    def _check_cancel(self) -> None:
        if self.cancel():
            raise Cancelled(_("data cache build cancelled"))

    def run(self) -> BuildStats:
        with self._lock() as lock_fd, contextlib.closing(self.cache._open_index()) as conn:
            self.conn = conn
            self._claim()
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
            raise DataCacheError(_("none of the {total:,} images of {source} could be read ({first})").format(
                total=st.total, source=self.files.source, first=first))
        self.progress(st.summary(), 1.0)
        return st

    def _claim(self) -> None:
        """Say that this build holds the cache now (pieces of an earlier, killed build stop writing)."""
        tmp = self.cache.path / f".{worker.TOKEN}.{self.token}"
        tmp.write_text(self.token)
        os.replace(tmp, self.cache.path / worker.TOKEN)

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
            raise DataCacheError(_("the data cache needs {value:.1f} GiB more for {new_images:,} images; "
                                   "{value2:.1f} GiB is free under {parent}").format(
                value=need / 2**30, new_images=new_images, value2=free / 2**30, parent=self.cache.path.parent))
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
        self._report(self.done)
        self._commit()

    def _report(self, done: float) -> None:
        now = time.monotonic()
        if now - self.last_report >= 0.2:
            self.last_report = now
            rate = done / max(1e-6, now - self.t0)
            self.progress(_("decoding images: {done:,} / {todo:,} ({rate:,.0f} images/s)").format(
                done=int(done), todo=self.todo, rate=rate),
                          min(1.0, done / max(1, self.todo)))

    # decoding
    def _task(self, i: int, slot: int) -> tuple:
        f = self.files
        rel = f.relpaths[i]
        if f.arrays is not None:
            split, k = rel.rsplit("/", 1)
            a = f.arrays[split][int(k)]
            return (slot, rel, np.ascontiguousarray(a).tobytes(), tuple(a.shape))
        return (slot, rel)

    def _piece(self, chunk: list[tuple[int, int]], ctx: dict) -> dict:
        """A shard as a JSON piece for :func:`nnlab.data._cacheworker.decode_piece`."""
        tasks = []
        for i, slot in chunk:
            t = self._task(i, slot)
            tasks.append([slot, t[1]] if len(t) == 2 else [slot, t[1], base64.b64encode(t[2]).decode(), list(t[3])])
        return {"cache": ctx, "token": self.token, "tasks": tasks}

    def _decode(self, assigned: list[tuple[int, int]], lock_fd: int) -> None:
        self.todo = self.stats.decoded = len(assigned)
        where = {slot: i for i, slot in assigned}
        chunks = deque(assigned[k:k + CHUNK] for k in range(0, len(assigned), CHUNK))
        ctx = worker.Context(str(self.cache.data_path), self.cache.slot_shape, self.cache.storage, self.files.root)
        if not chunks:
            return
        self.progress(_("decoding {n_assigned:,} images").format(n_assigned=len(assigned)), 0.0)
        n = 0 if self.auto_workers and len(assigned) <= SMALL_BUILD else min(max(0, self.workers), len(chunks))
        ex = executor(False if _in_ray_task() else self.use_ray) if n else None
        if ex is None:  # the calling thread, through map_tasks in-process
            self.stats.workers = 0
            self._map(chunks, where, ctx, use_ray=False, parallel=1)
        elif ex.kind == "ray":
            self.stats.workers = parallel = max(1, int(ex.cpus))
            self._map(chunks, where, ctx, use_ray=True, parallel=parallel)
        else:
            self.stats.workers = n
            _Pool(self, ctx, n, lock_fd).run(chunks, where)
        decoded = set(self.stats.decoded_paths)
        self.stats.decoded_paths = [r for r in self.files.relpaths if r in decoded]  # list order

    def _map(self, chunks: deque, where: dict[int, int], ctx: worker.Context, use_ray: bool, parallel: int) -> None:
        """Decode the shards as pieces of :func:`nnlab.jobs.pieces.map_tasks`, a wave at a time, committing each wave.

        A wave holds about ``commit_seconds`` of work (at least ``parallel`` pieces, twice that on Ray). A piece whose
        worker was lost has its images retried alone; one lost again alone is listed as unreadable.
        """
        import torch  # map_tasks sets the pieces' torch threads: in-process, keep this process's count

        message = ctx.to_message()
        threads = 1 if use_ray else torch.get_num_threads()
        floor = parallel * (2 if use_ray else 1)
        size, alone, lost = floor, set(), 0
        while chunks:
            self._check_cancel()
            take = len(chunks) if len(chunks) < size + floor else size  # no small wave left over at the end
            wave = [chunks.popleft() for _ in range(take)]
            t0 = time.monotonic()
            results = map_tasks(worker.decode_piece, [self._piece(c, message) for c in wave],
                                self._wave_progress(wave), self.cancel, use_ray=use_ray, threads_per_task=threads,
                                max_retries=1)
            stopped, error = False, ""
            for chunk, r in zip(wave, results):
                if r.ok:
                    self._accept(r.value["rows"], where)
                    stopped = stopped or r.value["stopped"]
                    error = error or r.value["fatal"]
                elif r.status == "cancelled":
                    stopped = True
                elif r.worker_lost:  # a decoder crash or a lost node: not yet the images' fault
                    lost += 1
                    if lost > 4 * parallel + 16:
                        error = error or f"decode tasks keep dying ({lost} so far: {r.error})"
                    elif len(chunk) == 1 and chunk[0][1] in alone:
                        i, slot = chunk[0]
                        self._accept([(slot, self.files.relpaths[i], -1, -1,
                                       f"the decoder crashed on this file ({r.error})")], where)
                    else:
                        alone.update(slot for _, slot in chunk)
                        chunks.extendleft([c] for c in reversed(chunk))
                else:  # the piece itself failed: a bug or a node without the shared folders, not an image
                    error = error or f"decoding failed on {r.node or r.executor}: {r.error}"
            self._commit(force=True)
            if error:
                raise DataCacheError(error)
            if stopped:
                raise Cancelled(_("data cache build cancelled"))
            took = max(1e-3, time.monotonic() - t0)
            size = max(floor, min(WAVE_MAX * parallel, round(len(wave) * self.commit_seconds / took)))

    def _wave_progress(self, wave: list[list[tuple[int, int]]]) -> Any:
        """map_tasks' per-piece progress → the build's progress (images done, throttled)."""
        part = [0.0] * len(wave)
        total = [0.0]

        def on_piece(i: int, message: str, fraction: float) -> None:
            new = fraction * len(wave[i])
            if new > part[i]:
                total[0] += new - part[i]
                part[i] = new
                self._report(self.done + total[0])

        return on_piece


def _in_ray_task() -> bool:
    """True inside a Ray task (a piece that loads a dataset): its build must not wait for Ray tasks of its own,
    which would need the CPUs the waiting task holds; it uses decode processes."""
    ray = sys.modules.get("ray")
    try:
        return bool(ray is not None and ray.is_initialized()
                    and ray.get_runtime_context().worker.mode == ray.WORKER_MODE)
    except Exception:  # noqa: BLE001 - a Ray without this API: not inside a task as far as we can tell
        return False


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
            raise DataCacheError(_("decode workers keep dying ({deaths} so far, exit code {returncode})").format(
                deaths=self.deaths, returncode=dead.proc.returncode))
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
