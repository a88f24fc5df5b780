"""The one job system: every long computation runs here, keyed by its inputs, shared by every session.

A *job kind* is a registered function ``fn(params, ctx) -> result`` whose ``params`` are plain JSON (models and
datasets travel as references: workspace ids, dataset keys and paths, never live objects). A job is one run of a
kind on some params; its key is the kind plus a hash of the params, so two sessions asking for the same thing
share one job. Jobs run in worker threads of the server process, survive navigation and closed tabs, and
persist their state under ``<workspace>/jobs/<key>.json`` (atomic writes): after a restart, finished jobs are
listed with their results and jobs that were queued or running in a process that is gone show as
*interrupted*, ready to run again. Results themselves go to the workspace, written by the job function (atomic,
record last), so a cancelled or failed job leaves nothing half-written.

Concurrency is bounded and stated: at most ``max_heavy()`` heavy jobs run at once (``$NNLAB_MAX_JOBS``,
default 1, so CPU work never oversubscribes the cores); light jobs (quick lookups) do not queue. Waiting heavy
jobs take a free slot by priority, then by arrival: the work the current selection needs (``SELECTION``: decoding,
evaluating and measuring the chosen model) goes ahead of background work (``BACKGROUND``), and a user may move one
job up (:meth:`JobManager.move_up`); :meth:`JobManager.ahead_of` says which jobs a queued one waits behind. A job
belongs to the sessions that asked for it (``owners``); :meth:`JobManager.release` drops a session from its jobs
and cancels those nobody else owns. No streamlit here; pages follow jobs through :mod:`nnlab.ui.session`.

Usage::

    @job_kind("data-checks", label=lambda p: f"data checks of {p['model_id']}")
    def data_checks(params: dict, ctx: JobContext) -> dict: ...

    job = submit("data-checks", {"model_id": ..., "data": {...}})   # returns at once; same params → same job
    job.snapshot()      # status, message, fraction, metrics, elapsed, eta …
    job.cancel()        # the function raises Cancelled at its next ctx.check_cancel()
    job.wait(timeout)   # tests and the CLI
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import threading
import time
import traceback
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnlab import config
from nnlab.errors import Cancelled
from nnlab.i18n import N_, _
from nnlab.workspace import WorkspaceError, atomic_write_text

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED, INTERRUPTED)
STATUS_LABELS = {QUEUED: N_("queued"), RUNNING: N_("running"), DONE: N_("done"), FAILED: N_("failed"),
                 CANCELLED: N_("cancelled"), INTERRUPTED: N_("interrupted")}  # the values stay ids (stored)


def status_label(status: str) -> str:
    """A job status in the reader's language."""
    return _(STATUS_LABELS[status]) if status in STATUS_LABELS else status


def label_of(job: "Job") -> str:
    """What ``job`` does, in the reader's language: its kind's label made again (the stored label is in the language
    of the session that started it)."""
    spec = KINDS.get(job.kind)
    if spec is None:
        return job.label
    try:
        return spec.label(job.params)
    except Exception:  # noqa: BLE001 - a label is cosmetic; the stored one is still right
        return job.label
_INSTANCE = f"{os.getpid()}-{time.time_ns()}"
_PERSIST_EVERY_S = 1.0
BACKGROUND, SELECTION = 0, 10  # priorities: implicit and background work; what the current selection needs


def max_heavy() -> int:
    """How many heavy jobs may run at once (``$NNLAB_MAX_JOBS``, default 1, at least 1)."""
    try:
        return max(1, int(os.environ.get("NNLAB_MAX_JOBS", "1")))
    except ValueError:
        return 1


# --- kinds ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobKind:
    """A registered kind of job.

    Attributes:
        name: Registry key (the start of every job key of this kind).
        fn: ``fn(params, ctx)``; returns a JSON-able summary (ids of what it wrote to the workspace, figures).
        label: ``label(params)``: what the job does, for the Jobs panel.
        heavy: Takes one of the ``max_heavy()`` slots (CPU-bound work); light jobs start at once.
    """

    name: str
    fn: Callable[[dict, JobContext], Any]
    label: Callable[[dict], str]
    heavy: bool = True


KINDS: dict[str, JobKind] = {}


def job_kind(name: str, label: Callable[[dict], str] | None = None,
             heavy: bool = True) -> Callable[[Callable[[dict, JobContext], Any]], Callable[[dict, JobContext], Any]]:
    """Decorator registering ``fn(params, ctx)`` as the job kind ``name``."""

    def deco(fn: Callable[[dict, JobContext], Any]) -> Callable[[dict, JobContext], Any]:
        KINDS[name] = JobKind(name, fn, label or (lambda p, n=name: n), heavy)
        return fn

    return deco


def job_key(kind: str, params: dict) -> str:
    """The key of the job that runs ``kind`` on ``params``: same inputs, same key."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return f"{kind}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


# --- one job -------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Job:
    """One run of a job kind.

    Attributes:
        key: ``<kind>-<hash of params>``.
        kind: The job kind.
        params: Its JSON parameters.
        label: What it does.
        owners: Browser sessions that asked for it (a job is shared; any of them may cancel it).
        status: queued, running, done, failed, cancelled or interrupted.
        message: Latest progress message.
        fraction: Latest progress fraction (0–1).
        metrics: Latest figures (step, loss, accuracy …) for the progress line.
        result: What the function returned (JSON), once done.
        error: One-line reason when failed or interrupted.
        detail: Traceback text when failed.
        created, started, finished: Unix times (0 until reached).
        runs: How many times this key was run (a re-run after failure or interruption counts).
        instance: The server process that runs (or ran) it.
        priority: Its rank in the heavy-slot queue (higher first: ``SELECTION`` over ``BACKGROUND``; a job moved
            up by a user ranks above every other).
    """

    key: str
    kind: str
    params: dict
    label: str
    owners: list[str] = field(default_factory=list)
    status: str = QUEUED
    message: str = field(default_factory=lambda: _("waiting for a free worker"))  # in the submitter's language
    fraction: float = 0.0
    metrics: dict = field(default_factory=dict)
    result: Any = None
    error: str = ""
    detail: str = ""
    created: float = field(default_factory=time.time)
    started: float = 0.0
    finished: float = 0.0
    runs: int = 1
    instance: str = _INSTANCE
    pid: int = field(default_factory=os.getpid)
    priority: int = BACKGROUND
    _seq: int = field(default=0, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _persisted: float = field(default=0.0, repr=False)
    _manager: Any = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def elapsed(self) -> float:
        """Seconds since it started running (until it finished); 0 while queued."""
        if not self.started:
            return 0.0
        return max(0.0, (self.finished or time.time()) - self.started)

    @property
    def eta(self) -> float | None:
        """Estimated seconds left, from the elapsed time and the fraction done (None until it means something)."""
        if self.status != RUNNING or self.fraction < 0.02 or self.elapsed < 1.0:
            return None
        return self.elapsed * (1.0 - self.fraction) / self.fraction

    def cancel(self) -> None:
        """Ask the job to stop: at once when queued, at its next check when running."""
        self._cancel.set()
        with self._lock:
            if self.status == QUEUED:
                self.message = _("cancel requested")
        _SLOTS.changed()  # a waiting job leaves the queue at once
        if self._manager is not None:
            self._manager._persist(self, force=True)

    def report(self, message: str, fraction: float | None = None, **metrics: Any) -> None:
        """Progress from the job function (fraction clipped to 0–1; it never goes backward within a run)."""
        with self._lock:
            self.message = str(message)
            if fraction is not None:
                self.fraction = max(self.fraction, float(min(1.0, max(0.0, fraction))))
            if metrics:
                self.metrics.update({k: v for k, v in metrics.items() if v is not None})
        if self._manager is not None:
            self._manager._persist(self)

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the public state (safe to read from any thread)."""
        with self._lock:
            return {"key": self.key, "kind": self.kind, "label": self.label, "owners": list(self.owners),
                    "status": self.status, "message": self.message, "fraction": self.fraction,
                    "metrics": dict(self.metrics), "error": self.error, "elapsed": self.elapsed, "eta": self.eta,
                    "created": self.created, "started": self.started, "finished": self.finished,
                    "runs": self.runs, "cancel_requested": self._cancel.is_set(), "result": self.result,
                    "priority": self.priority}

    def to_json(self) -> str:
        with self._lock:
            d = {"key": self.key, "kind": self.kind, "params": self.params, "label": self.label,
                 "owners": self.owners[-20:], "status": self.status, "message": self.message,
                 "fraction": self.fraction, "metrics": self.metrics, "result": self.result, "error": self.error,
                 "detail": self.detail, "created": self.created, "started": self.started,
                 "finished": self.finished, "runs": self.runs, "instance": self.instance, "pid": self.pid,
                 "priority": self.priority}
        return json.dumps(d, default=str)

    @classmethod
    def from_json(cls, text: str) -> Job:
        d = json.loads(text)
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and not k.startswith("_")}
        return cls(**known)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; True when it did within ``timeout``."""
        if not self.active:
            return True
        return self._done.wait(timeout)


# --- what a job function gets ----------------------------------------------------------------------------

class JobContext:
    """Handed to a job function: progress, cancellation, the workspace root.

    ``progress(message, fraction)`` and ``cancel()`` have the shapes the training loop and the compression
    engine already take, so they can be passed straight through.
    """

    def __init__(self, job: Job, workspace: Path) -> None:
        self._job = job
        self.key = job.key
        self.params = job.params
        self.workspace = workspace

    def progress(self, message: str, fraction: float | None = None, **metrics: Any) -> None:
        self._job.report(message, fraction, **metrics)

    def cancelled(self) -> bool:
        return self._job.cancel_requested

    def check_cancel(self) -> None:
        """Raise :class:`nnlab.train.Cancelled` when someone asked the job to stop."""
        if self._job.cancel_requested:
            raise Cancelled(_("cancelled by the user"))

    def sub(self, start: float, end: float) -> Callable[..., None]:
        """A ``progress(message, fraction, **metrics)`` that maps 0–1 onto ``start``–``end`` of this job."""

        def prog(message: str, fraction: float | None = None, **metrics: Any) -> None:
            f = None if fraction is None else start + (end - start) * float(min(1.0, max(0.0, fraction)))
            self.progress(message, f, **metrics)

        return prog

    def train_progress(self, start: float = 0.0, end: float = 1.0) -> Callable[[Any], None]:
        """A callback for :func:`nnlab.train.train_model` (epoch, batch, loss and accuracy become metrics)."""

        def prog(p: Any) -> None:
            acc = None if p.accuracy != p.accuracy else round(float(p.accuracy), 4)
            self.progress(p.message, start + (end - start) * p.fraction, epoch=f"{p.epoch}/{p.epochs}",
                          step=f"{p.batch}/{p.batches}", loss=round(float(p.loss), 4), accuracy=acc)

        return prog


# --- the manager -------------------------------------------------------------------------------------------

class _HeavySlots:
    """The ``max_heavy()`` heavy slots of this process, handed to waiting jobs by priority, then by arrival."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.running: list[Job] = []
        self.waiting: list[Job] = []
        self._order = itertools.count(1)

    @staticmethod
    def _rank(job: Job) -> tuple[int, int]:
        return -job.priority, job._seq

    def acquire(self, job: Job, poll: float = 0.2) -> bool:
        """Wait for a slot (cancellable while waiting); False when the job was cancelled first."""
        with self._cond:
            job._seq = next(self._order)
            self.waiting.append(job)
            try:
                while not job.cancel_requested:
                    if len(self.running) < max_heavy() and min(self.waiting, key=self._rank) is job:
                        self.running.append(job)
                        return True
                    self._cond.wait(poll)
                return False
            finally:
                self.waiting.remove(job)
                self._cond.notify_all()

    def release(self, job: Job) -> None:
        with self._cond:
            if job in self.running:
                self.running.remove(job)
            self._cond.notify_all()

    def changed(self) -> None:
        """A waiting job's priority changed: let the waiters look again."""
        with self._cond:
            self._cond.notify_all()

    def ahead_of(self, job: Job) -> list[Job]:
        """What a waiting job waits behind: the waiting jobs ranked before it, then the running ones."""
        with self._cond:
            if job not in self.waiting:
                return []
            ahead = sorted((j for j in self.waiting if self._rank(j) < self._rank(job)), key=self._rank)
            return ahead + list(self.running)

    def top_priority(self) -> int:
        with self._cond:
            return max((j.priority for j in self.waiting + self.running), default=BACKGROUND)


_SLOTS = _HeavySlots()


def _process_alive(pid: int, instance: str) -> bool:
    if instance == _INSTANCE:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # the pid exists; it is the same process only if it started when the instance says (pids are reused)
    try:
        import psutil

        started_ns = int(instance.split("-", 1)[1])
        return abs(psutil.Process(pid).create_time() - started_ns / 1e9) < 60
    except Exception:  # noqa: BLE001 - psutil missing or the process vanished: assume alive only if pid exists
        return True


class JobManager:
    """The jobs of one workspace in this process (one manager per workspace root)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.folder = self.root / "jobs"
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._load()

    # persistence
    def _load(self) -> None:
        """Read the persisted jobs; those of a process that is gone and never finished become interrupted."""
        if not self.folder.is_dir():
            return
        for p in sorted(self.folder.glob("*.json")):
            try:
                job = Job.from_json(p.read_text())
            except (OSError, ValueError, TypeError):
                continue
            if job.status in ACTIVE and not _process_alive(job.pid, job.instance):
                job.status, job.error = INTERRUPTED, "the server stopped while this job was " + job.status
                job.message = _("interrupted")
                job.finished = job.finished or time.time()
                job._manager = self
                self._persist(job, force=True)
            job._manager = self
            job._done.set()
            self._jobs[job.key] = job

    def _persist(self, job: Job, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - job._persisted < _PERSIST_EVERY_S:
            return
        job._persisted = now
        try:
            atomic_write_text(self.folder / f"{job.key}.json", job.to_json())
        except (WorkspaceError, OSError):
            pass  # a read-only workspace: jobs still run, they are just not listed after a restart

    # the API
    def submit(self, kind: str, params: dict, owner: str = "", rerun: bool = False,
               label: str | None = None, priority: int = BACKGROUND) -> Job:
        """Start ``kind`` on ``params`` unless the same job is queued, running, or done (then return that one).

        Args:
            kind: A registered job kind.
            params: JSON parameters (the job's identity).
            owner: The asking browser session (recorded; any owner may cancel).
            rerun: Run again even when a finished result exists (always when failed, cancelled, interrupted).
            label: Override the kind's label.
            priority: ``SELECTION`` for what the current selection needs, ``BACKGROUND`` otherwise; asking again
                for a waiting job with a higher priority raises its priority.
        """
        if kind not in KINDS:
            raise KeyError(f"unknown job kind {kind!r}")
        spec = KINDS[kind]
        params = json.loads(json.dumps(params, default=str))  # a private, JSON-clean copy
        key = job_key(kind, params)
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and (old.active or (old.status == DONE and not rerun)):
                with old._lock:
                    if owner and owner not in old.owners:
                        old.owners.append(owner)
                    raised = old.active and priority > old.priority
                    if raised:
                        old.priority = priority
                if raised:
                    _SLOTS.changed()
                return old
            job = Job(key=key, kind=kind, params=params, label=label or spec.label(params),
                      owners=[owner] if owner else [], runs=(old.runs + 1) if old is not None else 1,
                      priority=int(priority))
            job._manager = self
            self._jobs[key] = job
        self._persist(job, force=True)
        # the thread runs in a copy of the caller's context: its messages come in the language of the asking session
        threading.Thread(target=contextvars.copy_context().run, args=(self._run, job, spec), name=f"nnlab-job-{key}",
                         daemon=True).start()
        return job

    def _run(self, job: Job, spec: JobKind) -> None:
        slots = _SLOTS if spec.heavy else None
        acquired = False
        try:
            if slots is not None:
                acquired = slots.acquire(job)  # queue for a slot by priority, cancellable while waiting
                if not acquired:
                    raise Cancelled(_("cancelled before it started"))
            if job.cancel_requested:
                raise Cancelled(_("cancelled before it started"))
            with job._lock:
                job.status, job.started, job.message = RUNNING, time.time(), _("starting")
            self._persist(job, force=True)
            result = spec.fn(job.params, JobContext(job, self.root))
            with job._lock:
                job.result = json.loads(json.dumps(result, default=str)) if result is not None else None
                job.status, job.fraction, job.message = DONE, 1.0, _("done")
        except Cancelled:
            with job._lock:
                job.status, job.message = CANCELLED, _("cancelled")
        except BaseException as exc:  # noqa: BLE001 - a job must record every failure, never die silently
            with job._lock:
                job.status, job.message = FAILED, _("failed")
                job.error = f"{type(exc).__name__}: {exc}"[:500]
                job.detail = traceback.format_exc()[-4000:]
        finally:
            if acquired and slots is not None:
                slots.release(job)
            with job._lock:
                job.finished = time.time()
                if not job.started:
                    job.started = job.finished
            self._persist(job, force=True)
            job._done.set()

    def get(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def find(self, kind: str, params: dict) -> Job | None:
        """The job of ``kind`` on ``params``, if one was ever submitted (in any state)."""
        return self.get(job_key(kind, json.loads(json.dumps(params, default=str))))

    def list(self, kind: str | None = None, status: tuple[str, ...] | None = None) -> list[Job]:
        """Jobs, newest first, optionally of one kind and/or in some states."""
        with self._lock:
            jobs = list(self._jobs.values())
        jobs = [j for j in jobs if (kind is None or j.kind == kind) and (status is None or j.status in status)]
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def cancel(self, key: str) -> bool:
        job = self.get(key)
        if job is None:
            return False
        job.cancel()
        return True

    def rerun(self, key: str, owner: str = "") -> Job:
        """Run a finished (failed, cancelled, interrupted or done) job again with the same parameters."""
        job = self.get(key)
        if job is None:
            raise KeyError(key)
        if job.active:
            return job
        return self.submit(job.kind, job.params, owner=owner, rerun=True, label=job.label)

    def ahead_of(self, key: str) -> list[Job]:
        """The jobs a queued heavy job waits behind (those ranked before it, then the running ones); [] when it
        does not wait for a slot."""
        job = self.get(key)
        return _SLOTS.ahead_of(job) if job is not None and job.status == QUEUED else []

    def move_up(self, key: str) -> bool:
        """Put a queued job first in line for the next free heavy slot (a user's choice); False when it is not
        queued."""
        job = self.get(key)
        if job is None or job.status != QUEUED:
            return False
        with job._lock:
            job.priority = max(job.priority, _SLOTS.top_priority() + 1)
        self._persist(job, force=True)
        _SLOTS.changed()
        return True

    def release(self, owner: str, keys: Iterable[str] | None = None) -> list[Job]:
        """Drop the session ``owner`` from its active jobs (only ``keys`` when given); those no other session
        owns any more are cancelled. Returns the cancelled jobs."""
        if not owner:
            return []
        wanted = None if keys is None else set(keys)
        cancelled = []
        for job in self.list(status=ACTIVE):
            if wanted is not None and job.key not in wanted:
                continue
            with job._lock:
                if owner not in job.owners:
                    continue
                job.owners.remove(owner)
                orphan = not job.owners
            if orphan:
                job.cancel()
                cancelled.append(job)
            else:
                self._persist(job, force=True)
        return cancelled

    def forget(self, key: str) -> None:
        """Drop a finished job from the list (its results in the workspace stay)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None or job.active:
                return
            del self._jobs[key]
        try:
            (self.folder / f"{key}.json").unlink(missing_ok=True)
        except OSError:
            pass

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        out: dict[str, int] = {}
        for j in self.list():
            out[j.status] = out.get(j.status, 0) + 1
        return out


_MANAGERS: dict[str, JobManager] = {}
_MANAGERS_LOCK = threading.Lock()


def manager(root: str | Path | None = None) -> JobManager:
    """The job manager of a workspace (default: the configured one); one per root per process."""
    path = Path(root) if root is not None else config.workspace_dir()
    key = str(path.resolve())
    with _MANAGERS_LOCK:
        if key not in _MANAGERS:
            _MANAGERS[key] = JobManager(path)
        return _MANAGERS[key]


def submit(kind: str, params: dict, owner: str = "", rerun: bool = False, root: str | Path | None = None,
           label: str | None = None, priority: int = BACKGROUND) -> Job:
    """Submit to the configured workspace's manager (see :meth:`JobManager.submit`)."""
    return manager(root).submit(kind, params, owner=owner, rerun=rerun, label=label, priority=priority)


def get(key: str, root: str | Path | None = None) -> Job | None:
    return manager(root).get(key)


def find(kind: str, params: dict, root: str | Path | None = None) -> Job | None:
    return manager(root).find(kind, params)


def wait(key: str, timeout: float | None = None, root: str | Path | None = None) -> Job:
    """Block until a job ends (``TimeoutError`` after ``timeout`` seconds)."""
    job = get(key, root)
    if job is None:
        raise KeyError(key)
    if not job.wait(timeout):
        raise TimeoutError(_("job {key} still {status} after {timeout} s").format(
            key=key, status=job.status, timeout=timeout))
    return job
