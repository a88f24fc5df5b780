"""Background jobs: compression runs in worker threads, with progress, a cancel flag and a result.

Jobs live in a module-level registry, so they survive Streamlit reruns (a page script is re-executed,
this module is not) and every browser session of the server sees the same registry; a session keeps
the ids of its own jobs. At most ``max_concurrent()`` jobs run at once (``$NNLAB_MAX_JOBS``, default 2);
the others wait in the queue, still cancellable. No streamlit here.

Usage::

    job = start_variant(model, parent_id, arch, [cfg], data, ws)   # returns at once
    job.snapshot()   # status, message, fraction, elapsed …
    job.cancel()     # the worker raises Cancelled at its next check
    wait(job.id)     # (tests, CLI) block until it ends
"""

from __future__ import annotations

import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nnlab.train import Cancelled

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]
JobFn = Callable[[ProgressFn, CancelFn], Any]

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


def max_concurrent() -> int:
    """How many jobs may run at once (``$NNLAB_MAX_JOBS``, default 2, at least 1)."""
    try:
        return max(1, int(os.environ.get("NNLAB_MAX_JOBS", "2")))
    except ValueError:
        return 2


@dataclass(eq=False)
class Job:
    """One background run.

    Attributes:
        id: Registry key.
        label: What it does, for the UI.
        kind: "variant", "search", "sensitivity" … (lets a page pick its own jobs).
        owner: Who started it (a browser session key, "" when unknown).
        status: queued, running, done, failed or cancelled.
        message: Latest progress message.
        fraction: Latest progress fraction (0–1).
        result: The function's return value once done.
        error: One-line error message when failed.
        detail: Traceback text when failed (for a details expander).
        created, started, finished: Unix times (0 until reached).
    """

    id: str
    label: str
    kind: str = "job"
    owner: str = ""
    status: str = QUEUED
    message: str = "waiting for a free worker"
    fraction: float = 0.0
    result: Any = None
    error: str = ""
    detail: str = ""
    created: float = field(default_factory=time.time)
    started: float = 0.0
    finished: float = 0.0
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def finished_ok(self) -> bool:
        return self.status == DONE

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.status not in FINISHED

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def elapsed(self) -> float:
        """Seconds since it started running (until it finished); 0 while queued."""
        if not self.started:
            return 0.0
        return (self.finished or time.time()) - self.started

    def cancel(self) -> None:
        """Ask the job to stop; it ends as ``cancelled`` at its next check (at once when still queued)."""
        self._cancel.set()
        with self._lock:
            if self.status == QUEUED:
                self.message = "cancel requested"

    def report(self, message: str, fraction: float) -> None:
        """Progress callback handed to the worker function."""
        with self._lock:
            self.message = str(message)
            self.fraction = float(min(1.0, max(0.0, fraction)))

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the public state (safe to read from another thread)."""
        with self._lock:
            return {"id": self.id, "label": self.label, "kind": self.kind, "owner": self.owner,
                    "status": self.status, "message": self.message, "fraction": self.fraction,
                    "error": self.error, "elapsed": self.elapsed, "created": self.created,
                    "cancel_requested": self._cancel.is_set()}

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; True when it did within ``timeout``."""
        return self._done.wait(timeout)


_JOBS: dict[str, Job] = {}
_REGISTRY_LOCK = threading.Lock()
_SLOTS_LOCK = threading.Lock()
_slots: threading.Semaphore | None = None
_slots_n = 0


def _semaphore() -> threading.Semaphore:
    global _slots, _slots_n
    with _SLOTS_LOCK:
        n = max_concurrent()
        if _slots is None or n != _slots_n:
            _slots, _slots_n = threading.BoundedSemaphore(n), n
        return _slots


def submit(fn: JobFn, label: str, kind: str = "job", owner: str = "", job_id: str | None = None) -> Job:
    """Run ``fn(progress, cancel)`` in a worker thread; returns the :class:`Job` at once.

    ``fn`` reports through ``progress(message, fraction)`` and should call ``cancel()`` often, raising
    :class:`nnlab.train.Cancelled` when it returns True (the compression engine does both).
    """
    job = Job(id=job_id or f"job-{uuid.uuid4().hex[:10]}", label=label, kind=kind, owner=owner)
    with _REGISTRY_LOCK:
        if job.id in _JOBS:
            raise ValueError(f"a job {job.id!r} already exists")
        _JOBS[job.id] = job
    threading.Thread(target=_run, args=(job, fn), name=f"nnlab-{job.id}", daemon=True).start()
    return job


def _run(job: Job, fn: JobFn) -> None:
    slots = _semaphore()
    acquired = False
    try:
        while not job.cancel_requested:  # wait for a slot, but stay cancellable while queued
            if slots.acquire(timeout=0.2):
                acquired = True
                break
        if not acquired:
            raise Cancelled("cancelled before it started")
        with job._lock:
            job.status, job.started, job.message = RUNNING, time.time(), "starting"
        result = fn(job.report, lambda: job.cancel_requested)
        with job._lock:
            job.result, job.status, job.fraction = result, DONE, 1.0
            job.message = "done"
    except Cancelled:
        with job._lock:
            job.status, job.message = CANCELLED, "cancelled"
    except BaseException as exc:  # noqa: BLE001 - the worker must record every failure, never die silently
        with job._lock:
            job.status = FAILED
            job.error = f"{type(exc).__name__}: {exc}"[:500]
            job.detail = traceback.format_exc()[-4000:]
            job.message = "failed"
    finally:
        if acquired:
            slots.release()
        with job._lock:
            job.finished = time.time()
            if not job.started:
                job.started = job.finished
        job._done.set()


def get(job_id: str) -> Job | None:
    with _REGISTRY_LOCK:
        return _JOBS.get(job_id)


def list_jobs(kind: str | None = None, owner: str | None = None) -> list[Job]:
    """Jobs, oldest first, optionally of one kind and/or one owner."""
    with _REGISTRY_LOCK:
        jobs = list(_JOBS.values())
    return sorted((j for j in jobs if (kind is None or j.kind == kind) and (owner is None or j.owner == owner)),
                  key=lambda j: j.created)


def cancel(job_id: str) -> bool:
    """Ask a job to stop; False when there is no such job."""
    job = get(job_id)
    if job is None:
        return False
    job.cancel()
    return True


def wait(job_id: str, timeout: float | None = None) -> Job:
    """Block until a job ends (``TimeoutError`` after ``timeout`` seconds)."""
    job = get(job_id)
    if job is None:
        raise KeyError(job_id)
    if not job.wait(timeout):
        raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
    return job


def forget(job_id: str) -> None:
    """Drop a finished job from the registry (an active one is kept)."""
    with _REGISTRY_LOCK:
        job = _JOBS.get(job_id)
        if job is not None and not job.active:
            del _JOBS[job_id]


def prune_finished(max_age_s: float = 3600.0) -> int:
    """Drop jobs finished more than ``max_age_s`` ago; returns how many."""
    now = time.time()
    with _REGISTRY_LOCK:
        old = [k for k, j in _JOBS.items() if not j.active and j.finished and now - j.finished > max_age_s]
        for k in old:
            del _JOBS[k]
    return len(old)


def start_variant(parent_model: Any, parent_id: str, arch: str, configs: list, data: Any, ws: Any,
                  name: str | None = None, owner: str = "", **kwargs: Any) -> Job:
    """Run :func:`compression.variant.make_variant` in the background; the job's result is the Record.

    The parent model is only read (``make_variant`` deep-copies it), so a model shared by every browser
    session may be passed.
    """
    from compression.variant import make_variant

    methods = " → ".join(c.method for c in configs) or "(empty)"

    def run(progress: ProgressFn, cancel: CancelFn) -> Any:
        return make_variant(parent_model, parent_id, arch, list(configs), data, ws, name=name,
                            progress=progress, cancel=cancel, **kwargs)

    return submit(run, f"{methods} on {parent_id}", kind="variant", owner=owner)
