"""The background-job runner: progress, results, failures, cancellation, concurrency, registry."""

from __future__ import annotations

import threading
import time

import pytest

from compression import jobs
from nnlab.train import Cancelled


def _counting(n: int, gate: threading.Event | None = None, sleep: float = 0.0):
    def fn(progress, cancel):
        for i in range(n):
            if gate is not None:
                gate.wait(5)
            if cancel():
                raise Cancelled("stop")
            progress(f"step {i + 1}", (i + 1) / n)
            time.sleep(sleep)
        return sum(range(n))
    return fn


def test_job_runs_reports_progress_and_returns_result():
    seen = []

    def fn(progress, cancel):
        for i in range(4):
            progress(f"step {i}", (i + 1) / 4)
            seen.append(i)
        return 42

    job = jobs.submit(fn, "answer", kind="unit", owner="s1")
    assert jobs.wait(job.id, 10) is job
    assert job.status == jobs.DONE and job.result == 42 and job.fraction == 1.0
    assert seen == [0, 1, 2, 3]
    assert jobs.get(job.id) is job
    assert job in jobs.list_jobs(kind="unit", owner="s1")
    assert job not in jobs.list_jobs(owner="someone else")
    assert job.elapsed >= 0 and not job.active
    snap = job.snapshot()
    assert snap["status"] == "done" and snap["label"] == "answer"


def test_progress_is_visible_while_running_and_cancel_stops_it():
    gate = threading.Event()
    started = threading.Event()

    def fn(progress, cancel):
        progress("half", 0.5)
        started.set()
        gate.wait(10)
        if cancel():
            raise Cancelled("stop")
        return "not reached"

    job = jobs.submit(fn, "cancel me", kind="unit")
    assert started.wait(10)
    snap = job.snapshot()
    assert snap["status"] == "running" and snap["fraction"] == 0.5 and snap["message"] == "half"
    assert jobs.cancel(job.id)
    gate.set()
    jobs.wait(job.id, 10)
    assert job.status == jobs.CANCELLED and job.result is None
    assert not jobs.cancel("no-such-job")


def test_failure_is_recorded_with_message_not_raised():
    def fn(progress, cancel):
        raise ValueError("absurd sparsity 7")

    job = jobs.submit(fn, "bad", kind="unit")
    jobs.wait(job.id, 10)
    assert job.status == jobs.FAILED
    assert "ValueError: absurd sparsity 7" in job.error and "Traceback" in job.detail


def test_concurrency_limit_queues_and_queued_job_can_be_cancelled(monkeypatch):
    monkeypatch.setenv("NNLAB_MAX_JOBS", "1")
    gate = threading.Event()
    a = jobs.submit(_counting(2, gate), "a", kind="unit")
    b = jobs.submit(_counting(2), "b", kind="unit")
    time.sleep(0.5)
    assert a.status == jobs.RUNNING and b.status == jobs.QUEUED
    b.cancel()
    jobs.wait(b.id, 5)
    assert b.status == jobs.CANCELLED
    c = jobs.submit(_counting(3), "c", kind="unit")
    gate.set()
    jobs.wait(a.id, 10)
    jobs.wait(c.id, 10)
    assert (a.result, c.result) == (1, 3)
    assert c.started >= a.finished - 1e-3  # c waited for a's slot


def test_two_jobs_run_at_once_with_two_slots(monkeypatch):
    monkeypatch.setenv("NNLAB_MAX_JOBS", "2")
    both = threading.Barrier(2, timeout=5)

    def fn(progress, cancel):
        both.wait()  # deadlocks (BrokenBarrierError) unless both run concurrently
        return "ok"

    a = jobs.submit(fn, "a", kind="unit")
    b = jobs.submit(fn, "b", kind="unit")
    jobs.wait(a.id, 10)
    jobs.wait(b.id, 10)
    assert a.result == b.result == "ok"


def test_forget_and_duplicate_ids():
    job = jobs.submit(lambda p, c: 1, "x", kind="unit", job_id="fixed-id-1")
    with pytest.raises(ValueError):
        jobs.submit(lambda p, c: 1, "x", job_id="fixed-id-1")
    jobs.wait(job.id, 5)
    jobs.forget(job.id)
    assert jobs.get(job.id) is None
    with pytest.raises(KeyError):
        jobs.wait("fixed-id-1")


def test_start_variant_runs_make_variant(demo, digits, tmp_path):
    from compression.registry import config_from_dict
    from nnlab.workspace import Workspace

    model, rec, _ = demo
    ws = Workspace(tmp_path / "ws")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    job = jobs.start_variant(model, rec.id, rec.arch, [config_from_dict({"method": "prune-unstructured",
                                                                         "sparsity": 0.5})], digits, ws,
                             latency_repeats=3)
    jobs.wait(job.id, 120)
    assert job.status == jobs.DONE, job.error
    out = job.result
    assert [r.id for r in ws.list_variants()] == [out.id]
    assert out.parent == rec.id and out.method == "prune-unstructured"
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())  # parent untouched
