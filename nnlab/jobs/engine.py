"""The execution layer for a job's independent pieces: Ray tasks (local Ray or a cluster), or in-process.

A *piece* is a JSON-able dict (one configuration of a sweep, one shard, one fold); a *piece function* is an
importable module-level function ``fn(piece, report) -> dict``. :func:`map_tasks` runs every piece and
returns one :class:`TaskResult` per piece, in order. Models and datasets travel as references (a workspace
path and a model id, a dataset key and path; see :func:`dataset_ref`, :func:`model_ref`), never as live
objects pickled from a session; a piece resolves them with :func:`load_dataset_ref` / :func:`load_model_ref`.

Where the pieces run:

* **Local Ray** (the default): started lazily once per process with stated CPUs (``NNLAB_RAY_CPUS``, default
  all), no dashboard and a bounded object store (``NNLAB_RAY_OBJECT_STORE_MB``, default 200). ``ray.init``
  runs in a keeper thread that lives as long as the process: Ray ties its child processes to the thread
  that started them (``PR_SET_PDEATHSIG``), so initialising from a Streamlit script thread or a job thread
  would kill the local cluster when that thread ends.
* **A cluster**: ``NNLAB_RAY_ADDRESS`` (or ``--ray-address`` after ``streamlit run app.py --``, or
  ``make run RAY_ADDRESS=...``). The packages ``nnlab``, ``compression`` and ``diagnostics`` are uploaded
  with the job (``runtime_env.py_modules``; ``NNLAB_RAY_UPLOAD=0`` when the nodes have the code). The
  workspace must be the same path on every node (a shared file system): pieces write their results there.
* **In-process**: ``NNLAB_RAY=0``, ``use_ray=False``, or Ray failing to start. The same piece function runs
  in the calling thread, one piece after another, with the same thread count, so it gives the same results.

Threads: Ray sets ``OMP_NUM_THREADS`` to a task's CPU count (1 when the task states none), but torch in a
reused worker keeps the thread count it started with. Here every task asks for
``max(cpus_per_task, threads_per_task)`` CPUs (so Ray's ``OMP_NUM_THREADS`` is the thread count; when more
CPUs than threads are reserved, the task's runtime environment sets ``OMP_NUM_THREADS`` explicitly) and runs
under :func:`nnlab.threads.torch_threads` with ``threads_per_task``, in Ray and in-process alike (an untimed
block: it holds no lock while the piece runs, so pages and other jobs never wait for a piece); the count
is given to the piece (``report.threads``) so that it can record it. Reserving CPUs is what keeps other tasks
off those cores on a node, which fair latency needs (one task per node: ``cpus_per_task`` = the node's CPUs).

Progress: ``progress(index, message, fraction)`` is called in the caller's thread for every piece (Ray tasks
send their reports to a small actor that the caller drains). Cancel: ``cancel()`` is polled; when it returns
True the pieces are told to stop (their ``report.cancelled()`` turns True and ``ray.cancel`` interrupts
them), and after a grace period the tasks still running are killed (``ray.cancel(force=True)``). A worker
lost mid-task is retried ``max_retries`` times by Ray, then reported as failed. The optional ``cleanup``
function is called in the caller for every piece that did not finish, once its task has ended, to remove
anything half-written.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnlab.i18n import _

if TYPE_CHECKING:  # importing this module stays light (Ray's helper processes import it): torch loads lazily
    pass

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the project root (nnlab/jobs/engine.py)
PACKAGES = ("nnlab", "compression", "diagnostics")

ProgressFn = Callable[[int, str, float], None]
CancelFn = Callable[[], bool]
PieceFn = Callable[[dict, "Report"], dict]

_POLL_S = 0.2           # how often the caller polls tasks, progress and cancel
_REPORT_EVERY_S = 0.25  # a task sends at most one progress report per this interval (plus the last)
_CANCEL_CHECK_S = 0.5   # a task asks whether it was cancelled at most this often
_GRACE_S = 3.0          # after Cancel, tasks get this long to stop by themselves before they are killed


# --- results -------------------------------------------------------------------------------------------

@dataclass
class TaskResult:
    """What became of one piece.

    Attributes:
        index: The piece's position in the list given to :func:`map_tasks`.
        status: "ok", "failed" or "cancelled".
        value: The piece function's return value (when ok).
        error: Why it failed ("" when ok).
        node: Where it ran last: host name, and the Ray node id's first 8 characters on Ray.
        executor: "ray" or "in-process".
        threads: Intra-op threads it ran with.
        seconds: Wall time of its last attempt (as measured where it ran).
        attempts: How many times it was started (more than 1 after a lost worker).
    """

    index: int
    status: str
    value: dict | None = None
    error: str = ""
    node: str = ""
    executor: str = ""
    threads: int = 0
    seconds: float = 0.0
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def worker_lost(self) -> bool:
        """True when the piece failed because its worker was lost (after Ray's ``max_retries``), not because the
        piece function raised: the piece itself may be fine, so a caller can split it and try again."""
        return self.status == "failed" and self.error.startswith(WORKER_LOST)

    def to_dict(self) -> dict:
        return asdict(self)


WORKER_LOST = "worker lost"  # how the error of a piece whose worker was lost begins (see TaskResult.worker_lost)


@dataclass
class Executor:
    """Where :func:`map_tasks` runs pieces now.

    Attributes:
        kind: "ray" or "in-process".
        address: "local" for a Ray instance started here, the cluster address otherwise ("" in-process).
        cpus: CPUs Ray sees in the cluster (0 in-process).
        nodes: Alive Ray nodes (0 in-process).
        reason: Why it is in-process (disabled, failed to start: the error) or "" (English: records and the
            CLI's JSON keep it).
    """

    kind: str
    address: str = ""
    cpus: float = 0.0
    nodes: int = 0
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class Report:
    """Handed to a piece function: ``report(message, fraction, **metrics)`` sends progress.

    Attributes:
        index: The piece's index.
        threads: Intra-op threads the piece runs with (record it).
        node: Where the piece runs (record it).
        executor: "ray" or "in-process".
        attempt: 1 on the first run of the piece, 2 after a lost worker …
    """

    def __init__(self, index: int, threads: int, node: str, executor: str, attempt: int = 1) -> None:
        self.index, self.threads, self.node, self.executor, self.attempt = index, threads, node, executor, attempt

    def __call__(self, message: str, fraction: float, **metrics: Any) -> None:
        raise NotImplementedError

    def cancelled(self) -> bool:
        """True once the caller asked to stop (pieces pass this as their ``cancel`` callback)."""
        return False

    def check_cancel(self) -> None:
        """Raise :class:`nnlab.train.Cancelled` when the caller asked to stop."""
        if self.cancelled():
            from nnlab.errors import Cancelled

            raise Cancelled(_("cancelled by the user"))


class _LocalReport(Report):
    def __init__(self, index: int, threads: int, progress: ProgressFn | None, cancel: CancelFn) -> None:
        super().__init__(index, threads, node_name(), "in-process")
        self._progress, self._cancel = progress, cancel

    def __call__(self, message: str, fraction: float, **metrics: Any) -> None:
        if self._progress is not None:
            self._progress(self.index, str(message), _clip(fraction))

    def cancelled(self) -> bool:
        return bool(self._cancel())


class _RayReport(Report):
    """Sends reports to the caller's board actor, throttled; asks it whether the job was cancelled."""

    def __init__(self, run: str, index: int, threads: int, node: str, board: Any, attempt: int) -> None:
        super().__init__(index, threads, node, "ray", attempt)
        self._run, self._board = run, board
        self._last_sent = 0.0
        self._last_check = 0.0
        self._cancelled = False

    def __call__(self, message: str, fraction: float, **metrics: Any) -> None:
        now = time.monotonic()
        frac = _clip(fraction)
        if frac >= 1.0 or now - self._last_sent >= _REPORT_EVERY_S:
            self._last_sent = now
            self._board.push.remote(self._run, self.index, self.attempt, str(message), frac, _jsonable(metrics))

    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._last_check >= _CANCEL_CHECK_S:
            self._last_check = now
            import ray

            try:
                self._cancelled = bool(ray.get(self._board.is_cancelled.remote(self._run), timeout=10))
            except Exception:  # noqa: BLE001 - the caller is gone: nobody wants the result any more
                self._cancelled = True
        return self._cancelled


def _clip(fraction: float) -> float:
    try:
        return float(min(1.0, max(0.0, float(fraction))))
    except (TypeError, ValueError):
        return 0.0


def _jsonable(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        try:
            json.dumps(v)
            out[k] = v
        except (TypeError, ValueError):
            out[k] = str(v)
    return out


def node_name() -> str:
    """Where this code runs: the host name, plus the Ray node id's first 8 characters inside a Ray worker."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            if ctx.worker.mode == ray.WORKER_MODE:
                return f"{host}/{ctx.get_node_id()[:8]}"
    except Exception:  # noqa: BLE001 - Ray missing or not a worker
        pass
    return host


# --- piece functions -------------------------------------------------------------------------------------

def function_path(fn: Callable) -> str:
    """``"module:qualname"`` of an importable module-level function (``ValueError`` otherwise)."""
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or not qual or "<" in qual or "." in qual:
        raise ValueError(_("a piece function must be a module-level function of an importable module, got "
                           "{fn!r}").format(fn=fn))
    if _import_function(f"{module}:{qual}") is not fn:
        raise ValueError(_("{module}:{qual} does not import back as the same function").format(
            module=module, qual=qual))
    return f"{module}:{qual}"


def _import_function(path: str) -> Callable:
    module, qual = path.split(":", 1)
    return getattr(importlib.import_module(module), qual)


def _run_piece(fn_path: str, piece: dict, report: Report) -> dict:
    """Run one piece with its thread count set (the same in Ray and in-process); returns the task's facts.

    The count is set by :func:`nnlab.threads.torch_threads`, which holds no lock across the piece; a piece that
    times something does so inside :func:`nnlab.measure.interleaved_latency` (the timed section).
    """
    from nnlab.threads import torch_threads

    fn = _import_function(fn_path)
    t0 = time.perf_counter()
    with torch_threads(report.threads):
        value = fn(piece, report)
    if not isinstance(value, dict):
        raise TypeError(f"{fn_path} returned {type(value).__name__}, not a dict")
    return {"value": value, "node": report.node, "threads": report.threads,
            "seconds": time.perf_counter() - t0, "pid": os.getpid()}


# --- Ray: lazy start, once per process --------------------------------------------------------------------

_RAY_LOCK = threading.Lock()
_RAY: dict[str, Any] = {"executor": None, "keeper": None, "owned": False}


def ray_disabled() -> bool:
    """True when ``NNLAB_RAY`` is 0/false/off/no."""
    return os.environ.get("NNLAB_RAY", "1").strip().lower() in ("0", "false", "off", "no")


def ray_address() -> str:
    """``NNLAB_RAY_ADDRESS`` ("" or "local": start a local Ray)."""
    return os.environ.get("NNLAB_RAY_ADDRESS", "").strip()


def _local_cpus() -> int:
    env = os.environ.get("NNLAB_RAY_CPUS", "").strip()
    return max(1, int(env)) if env else max(1, os.cpu_count() or 1)


def _object_store_bytes() -> int:
    mb = int(os.environ.get("NNLAB_RAY_OBJECT_STORE_MB", "200"))
    return max(80, mb) * 1024 * 1024


def _init_kwargs(address: str, cpus: int | None) -> dict:
    import ray

    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                          "namespace": "nnlab"}
    if address in ("", "local"):
        kw.update(address="local", num_cpus=cpus or _local_cpus(), object_store_memory=_object_store_bytes(),
                  job_config=ray.job_config.JobConfig(code_search_path=[str(ROOT)]))
    else:
        kw["address"] = address
        if os.environ.get("NNLAB_RAY_UPLOAD", "1") != "0":
            mods = [importlib.import_module(p) for p in PACKAGES if (ROOT / p).is_dir()]
            kw["runtime_env"] = {"py_modules": mods, "excludes": ["__pycache__", "*.pyc"]}
    return kw


def _keeper(kw: dict, box: dict, ready: threading.Event) -> None:
    """Start Ray from a thread that never ends (Ray's children die with the thread that started them)."""
    try:
        import ray

        ray.init(**kw)
        box["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - reported to the caller; this thread must not die loudly
        box["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        ready.set()
    threading.Event().wait()  # park forever (daemon): the local Ray lives as long as the process


def ensure_ray(address: str | None = None, cpus: int | None = None, timeout: float = 120.0) -> Executor:
    """Start (or attach to) Ray once per process and say where pieces will run.

    Safe from any thread and any number of Streamlit reruns: a lock guards it and Ray is never initialised
    twice. A failure is remembered (the pieces then run in-process, with the reason in
    :attr:`Executor.reason`); :func:`shutdown_ray` forgets it.

    Args:
        address: Cluster address, or "local" / "" for a local Ray (default: ``NNLAB_RAY_ADDRESS``).
        cpus: CPUs of a local Ray (default ``NNLAB_RAY_CPUS`` or all).
        timeout: Seconds to wait for Ray to start.
    """
    with _RAY_LOCK:
        ex = _RAY["executor"]
        if ex is not None:
            if ex.kind == "ray":
                return _refresh(ex)
            return ex
        try:
            import ray
        except Exception as exc:  # noqa: BLE001 - not installed or broken
            ex = Executor("in-process", reason=f"Ray is not available ({type(exc).__name__}: {exc})")
            _RAY["executor"] = ex
            return ex
        addr = ray_address() if address is None else address.strip()
        if ray.is_initialized():  # someone in this process started it already (a test, a notebook): use it
            ex = _refresh(Executor("ray", address=addr or "local"))
            _RAY["executor"] = ex
            return ex
        box: dict[str, Any] = {}
        ready = threading.Event()
        keeper = threading.Thread(target=_keeper, args=(_init_kwargs(addr, cpus), box, ready),
                                  name="nnlab-ray", daemon=True)
        keeper.start()
        if not ready.wait(timeout) or not box.get("ok"):
            reason = box.get("error") or f"Ray did not start within {timeout:.0f} s"
            log.warning("Ray is unavailable, pieces run in-process: %s", reason)
            ex = Executor("in-process", reason=f"Ray failed to start: {reason}")
        else:
            ex = _refresh(Executor("ray", address=addr or "local"))
            _RAY["keeper"], _RAY["owned"] = keeper, True
            with contextlib.suppress(Exception):
                _remote("board")  # start the board's process now, while the first pieces are prepared
        _RAY["executor"] = ex
        return ex


def _refresh(ex: Executor) -> Executor:
    import ray

    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        ex.nodes = len(nodes)
        ex.cpus = float(sum(n.get("Resources", {}).get("CPU", 0.0) for n in nodes))
    except Exception:  # noqa: BLE001 - keep the last known figures
        pass
    return ex


def executor(use_ray: bool | None = None) -> Executor:
    """Where pieces would run for ``use_ray`` (None: ``NNLAB_RAY`` / ``NNLAB_RAY_ADDRESS``); starts Ray if needed."""
    if use_ray is False or (use_ray is None and ray_disabled()):
        return Executor("in-process", reason="Ray is disabled" + (" (NNLAB_RAY=0)" if use_ray is None else ""))
    return ensure_ray()


def shutdown_ray() -> None:
    """Disconnect from Ray (stopping a local Ray started here) and forget the state. For tests and benchmarks."""
    with _RAY_LOCK:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
        _RAY.update(executor=None, keeper=None, owned=False, board=None, task=None)


class _Board:
    """A Ray actor (no CPU), one per calling process: collects the tasks' progress reports, run by run, and
    holds the runs' cancel flags. One long-lived actor: creating one per run would start a process each time."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple]] = {}
        self.starts: dict[tuple[str, int], int] = {}
        self.cancelled: set[str] = set()

    def start(self, run: str, index: int, where: str) -> int:
        """Count a start of piece ``index`` of ``run`` (``where``: node and process); returns the attempt (1, 2 …)."""
        n = self.starts[(run, index)] = self.starts.get((run, index), 0) + 1
        again = f" (attempt {n})" if n > 1 else ""
        self.events.setdefault(run, []).append((index, n, f"started on {where}{again}", 0.0, {}))
        return n

    def push(self, run: str, index: int, attempt: int, message: str, fraction: float, metrics: dict) -> None:
        self.events.setdefault(run, []).append((index, attempt, message, fraction, metrics))

    def drain(self, run: str) -> list[tuple]:
        return self.events.pop(run, [])

    def cancel(self, run: str) -> None:
        self.cancelled.add(run)

    def is_cancelled(self, run: str) -> bool:
        return run in self.cancelled

    def forget(self, run: str) -> None:
        self.events.pop(run, None)
        self.cancelled.discard(run)
        for key in [k for k in self.starts if k[0] == run]:
            del self.starts[key]


def _task(fn_path: str, piece: dict, run: str, index: int, threads: int, board: Any) -> dict:
    """The body of every Ray task: count the attempt, then run the piece like in-process."""
    import ray

    node = node_name()
    try:
        attempt = int(ray.get(board.start.remote(run, index, f"{node} pid {os.getpid()}"), timeout=60))
    except Exception:  # noqa: BLE001 - the board is gone (its node died): run anyway, unreported
        attempt = 1
    try:
        return _run_piece(fn_path, piece, _RayReport(run, index, threads, node, board, attempt))
    finally:  # the board has every report of this task before its result is visible to the caller
        with contextlib.suppress(Exception):
            ray.get(board.is_cancelled.remote(run), timeout=10)


def _remote(name: str) -> Any:
    """The Ray-wrapped task function, or this process's board actor; built on first use."""
    obj = _RAY.get(name)
    if obj is None:
        import ray

        if name == "task":
            obj = ray.remote(_task)
        else:  # the board lives on this node (soft): progress and cancel stay local to the caller
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            obj = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_Board).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
        _RAY[name] = obj
    return obj


# --- map_tasks -----------------------------------------------------------------------------------------

def raise_for_outcome(results: list[TaskResult], names: list[str], what: str) -> None:
    """Raise :class:`~nnlab.errors.Cancelled` when a piece was cancelled, else ``RuntimeError`` naming every failed
    piece (``"<what>: <name>: <error>; …"``); return when all pieces succeeded."""
    from nnlab.errors import Cancelled

    if any(r.status == "cancelled" for r in results):
        raise Cancelled(_("cancelled by the user"))
    failed = [f"{names[r.index]}: {r.error}" for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{what}: " + "; ".join(failed))


def map_tasks(fn: PieceFn, pieces: list[dict], progress: ProgressFn | None = None, cancel: CancelFn | None = None,
              *, use_ray: bool | None = None, cpus_per_task: int = 1, threads_per_task: int = 1,
              max_retries: int = 1, cleanup: Callable[[dict], None] | None = None) -> list[TaskResult]:
    """Run ``fn(piece, report)`` for every piece, on Ray or in-process; one :class:`TaskResult` per piece.

    Args:
        fn: An importable module-level function ``fn(piece: dict, report: Report) -> dict``.
        pieces: JSON-able dicts (references to models and data, never live objects).
        progress: ``progress(index, message, fraction)``, called in this thread.
        cancel: Polled; True stops the remaining pieces (they end as "cancelled").
        use_ray: True: Ray (local or ``NNLAB_RAY_ADDRESS``); False: in-process; None: Ray unless ``NNLAB_RAY=0``.
            When Ray cannot start, the pieces run in-process.
        cpus_per_task: CPUs Ray reserves per task (at least ``threads_per_task``).
        threads_per_task: Intra-op threads of each piece (``OMP_NUM_THREADS`` and torch's), in both modes.
        max_retries: Times Ray reruns a piece whose worker was lost; then it is reported as failed.
        cleanup: Importable function ``cleanup(piece)`` called here for each piece that did not finish ok,
            after its task ended (to remove half-written output).
    """
    path = function_path(fn)
    clean_path = function_path(cleanup) if cleanup is not None else None
    for p in pieces:
        json.dumps(p)  # a piece must be JSON-able: references, not objects
    threads = max(1, int(threads_per_task))
    stop = cancel or (lambda: False)
    ex = executor(use_ray)
    if not pieces:
        return []
    if ex.kind == "ray":
        results = _map_ray(path, pieces, progress, stop, max(cpus_per_task, threads), threads, max_retries)
    else:
        results = _map_local(path, pieces, progress, stop, threads)
    if clean_path is not None:
        clean = _import_function(clean_path)
        for r in results:
            if not r.ok:
                try:
                    clean(pieces[r.index])
                except Exception as exc:  # noqa: BLE001 - cleanup must not hide the results
                    log.warning("cleanup of piece %d failed: %s", r.index, exc)
    return results


def _map_local(path: str, pieces: list[dict], progress: ProgressFn | None, stop: CancelFn,
               threads: int) -> list[TaskResult]:
    from nnlab.errors import Cancelled

    results: list[TaskResult] = []
    stopped = False
    for i, piece in enumerate(pieces):
        if stopped or stop():
            stopped = True
            results.append(TaskResult(i, "cancelled", error="cancelled before it started", executor="in-process"))
            continue
        report = _LocalReport(i, threads, progress, stop)
        report(_("started on {node} (in-process)").format(node=report.node), 0.0)
        try:
            out = _run_piece(path, piece, report)
        except Cancelled as exc:
            stopped = True
            results.append(TaskResult(i, "cancelled", error=str(exc), node=report.node, executor="in-process",
                                      threads=threads, attempts=1))
            continue
        except Exception as exc:  # noqa: BLE001 - one failing piece does not end the others
            results.append(TaskResult(i, "failed", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                                      node=report.node, executor="in-process", threads=threads, attempts=1))
            continue
        results.append(TaskResult(i, "ok", value=out["value"], node=out["node"], executor="in-process",
                                  threads=threads, seconds=out["seconds"], attempts=1))
    return results


def _map_ray(path: str, pieces: list[dict], progress: ProgressFn | None, stop: CancelFn, cpus: int, threads: int,
             max_retries: int) -> list[TaskResult]:
    import ray
    from ray import exceptions as rex

    with _RAY_LOCK:
        board = _remote("board")
    run = os.urandom(8).hex()
    opts: dict[str, Any] = {"num_cpus": cpus, "max_retries": max(0, int(max_retries)), "retry_exceptions": False}
    if threads != cpus:  # Ray sets OMP_NUM_THREADS to the task's CPUs; say otherwise (costs fresh workers)
        opts["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
    remote = _remote("task").options(**opts)
    refs = [remote.remote(path, piece, run, i, threads, board) for i, piece in enumerate(pieces)]
    index = {ref: i for i, ref in enumerate(refs)}
    results: dict[int, TaskResult] = {}
    attempts: dict[int, int] = {}
    nodes: dict[int, str] = {}
    pending = list(refs)
    cancel_at: float | None = None
    forced = False

    def drain() -> None:
        try:
            events = ray.get(board.drain.remote(run), timeout=30)
        except Exception:  # noqa: BLE001 - progress is best effort
            return
        for i, attempt, message, fraction, _metrics in events:
            attempts[i] = max(attempts.get(i, 0), attempt)
            if progress is not None:
                progress(i, message, fraction)

    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_S, fetch_local=True)
            drain()
            for ref in ready:
                i = index[ref]
                results[i] = _collect(ray, rex, ref, i, threads, cancel_at is not None, attempts)
                if results[i].node:
                    nodes[i] = results[i].node
            if cancel_at is None and pending and stop():
                cancel_at = time.monotonic()
                board.cancel.remote(run)
                for ref in pending:
                    ray.cancel(ref, force=False)
            elif cancel_at is not None and not forced and pending and time.monotonic() - cancel_at > _GRACE_S:
                forced = True
                for ref in pending:
                    ray.cancel(ref, force=True)
    finally:
        with contextlib.suppress(Exception):
            board.forget.remote(run)
    return [results[i] for i in range(len(pieces))]


def _collect(ray: Any, rex: Any, ref: Any, i: int, threads: int, cancelling: bool,
             attempts: dict[int, int]) -> TaskResult:
    n = max(1, attempts.get(i, 1))
    try:
        out = ray.get(ref)
    except rex.TaskCancelledError:
        return TaskResult(i, "cancelled", error="cancelled", executor="ray", threads=threads, attempts=n)
    except rex.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        from nnlab.errors import Cancelled

        if isinstance(cause, (Cancelled, KeyboardInterrupt)) or cancelling:
            return TaskResult(i, "cancelled", error="cancelled", executor="ray", threads=threads, attempts=n)
        return TaskResult(i, "failed", error=f"{type(cause).__name__}: {str(cause)[:300]}", executor="ray",
                          threads=threads, attempts=n)
    except (rex.WorkerCrashedError, rex.NodeDiedError, rex.RayError) as exc:
        if cancelling:
            return TaskResult(i, "cancelled", error="cancelled (worker stopped)", executor="ray", threads=threads,
                              attempts=n)
        return TaskResult(i, "failed", error=f"{WORKER_LOST} after {n} attempt(s): {type(exc).__name__}",
                          executor="ray", threads=threads, attempts=n)
    return TaskResult(i, "ok", value=out["value"], node=out["node"], executor="ray", threads=out["threads"],
                      seconds=out["seconds"], attempts=n)


# --- references to data and models ------------------------------------------------------------------------
# Built on nnlab.jobs.refs (its process-wide caches: a worker loads each dataset and base model once); the extra
# fields here let a worker check that it resolved the caller's data and weights, not a look-alike.

