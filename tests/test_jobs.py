"""The one job system: keyed by inputs, shared, progress and metrics, cancel, queue, persistence, interruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nnlab.jobs import manager as jobs
from nnlab.jobs.manager import JobContext, JobManager, job_key, job_kind
from nnlab.train import Cancelled
from tests.waiting import wait_for

GATES: dict[str, threading.Event] = {}
CALLS: list[str] = []


@job_kind("test-count", label=lambda p: f"count to {p['n']}")
def _count(params: dict, ctx: JobContext) -> dict:
    CALLS.append(ctx.key)
    gate = GATES.get(params.get("gate", ""))
    for i in range(params["n"]):
        if gate is not None:
            gate.wait(10)
        ctx.check_cancel()
        ctx.progress(f"step {i + 1}", (i + 1) / params["n"], loss=1.0 / (i + 1))
        time.sleep(params.get("sleep", 0.0))
    return {"sum": sum(range(params["n"]))}


@job_kind("test-fail")
def _fail(params: dict, ctx: JobContext) -> None:
    raise ValueError("absurd sparsity 7")


@job_kind("test-light", heavy=False)
def _light(params: dict, ctx: JobContext) -> str:
    return "light"


@pytest.fixture()
def mgr(tmp_path, monkeypatch) -> JobManager:
    monkeypatch.setenv("NNLAB_MAX_JOBS", "1")
    return JobManager(tmp_path / "ws")


def test_runs_reports_progress_metrics_and_result(mgr):
    job = mgr.submit("test-count", {"n": 4}, owner="s1")
    assert job.wait(10) and job.status == jobs.DONE
    assert job.result == {"sum": 6} and job.fraction == 1.0 and job.metrics["loss"] == 0.25
    assert job.key == job_key("test-count", {"n": 4}) and job.label == "count to 4"
    snap = job.snapshot()
    assert snap["status"] == "done" and snap["owners"] == ["s1"] and snap["elapsed"] >= 0


def test_same_inputs_share_one_job_and_done_is_not_rerun(mgr):
    GATES["share"] = threading.Event()
    calls = len(CALLS)
    a = mgr.submit("test-count", {"n": 2, "gate": "share"}, owner="s1")
    b = mgr.submit("test-count", {"gate": "share", "n": 2}, owner="s2")  # same params, other key order
    assert a is b and a.owners == ["s1", "s2"]
    GATES["share"].set()
    assert a.wait(10) and a.status == jobs.DONE
    assert mgr.submit("test-count", {"n": 2, "gate": "share"}) is a  # done: the result is reused
    assert len(CALLS) == calls + 1
    again = mgr.submit("test-count", {"n": 2, "gate": "share"}, rerun=True)
    assert again is not a and again.wait(10) and again.runs == 2 and len(CALLS) == calls + 2


def test_cancel_from_any_owner_stops_it_and_a_failure_is_recorded(mgr):
    GATES["cancel"] = threading.Event()
    job = mgr.submit("test-count", {"n": 3, "gate": "cancel"}, owner="s1")
    wait_for(lambda: job.status == jobs.RUNNING, 10, what="the job to start")
    mgr.submit("test-count", {"n": 3, "gate": "cancel"}, owner="s2").cancel()  # the second session cancels
    GATES["cancel"].set()
    assert job.wait(10) and job.status == jobs.CANCELLED and job.result is None
    bad = mgr.submit("test-fail", {})
    assert bad.wait(10) and bad.status == jobs.FAILED
    assert "absurd sparsity 7" in bad.error and "Traceback" in bad.detail


def test_one_heavy_job_at_a_time_light_jobs_do_not_queue(mgr):
    GATES["slot"] = threading.Event()
    a = mgr.submit("test-count", {"n": 1, "gate": "slot"})
    b = mgr.submit("test-count", {"n": 2})
    light = mgr.submit("test-light", {})
    assert light.wait(5) and light.result == "light"  # did not wait for the heavy slot
    wait_for(lambda: a.status == jobs.RUNNING, 10, what="the first heavy job to start")
    assert b.status == jobs.QUEUED  # while a holds the only heavy slot (b never ran: see its start time below)
    GATES["slot"].set()
    assert a.wait(10) and b.wait(10)
    assert b.started >= a.finished - 1e-3


def test_queued_job_can_be_cancelled_before_it_starts(mgr):
    GATES["q"] = threading.Event()
    a = mgr.submit("test-count", {"n": 1, "gate": "q"})
    b = mgr.submit("test-count", {"n": 5})
    wait_for(lambda: a.status == jobs.RUNNING, 10, what="the first job to take the heavy slot")
    assert b.status == jobs.QUEUED
    b.cancel()
    assert b.wait(5) and b.status == jobs.CANCELLED and b.metrics == {}  # it never ran a step
    GATES["q"].set()
    assert a.wait(10)


def test_state_persists_and_a_new_process_lists_it(mgr, tmp_path):
    job = mgr.submit("test-count", {"n": 2})
    assert job.wait(10)
    saved = json.loads((tmp_path / "ws" / "jobs" / f"{job.key}.json").read_text())
    assert saved["status"] == "done" and saved["result"] == {"sum": 1}
    again = JobManager(tmp_path / "ws")  # what a restarted server reads
    old = again.get(job.key)
    assert old is not None and old.status == jobs.DONE and old.result == {"sum": 1} and not old.active


def test_jobs_of_a_killed_process_show_as_interrupted_and_can_run_again(tmp_path):
    ws = tmp_path / "ws"
    code = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from tests.test_jobs import *  # registers the kinds
from nnlab.jobs.manager import JobManager
m = JobManager({str(ws)!r})
m.submit("test-count", {{"n": 30, "sleep": 0.1}})
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "NNLAB_MAX_JOBS": "1"})
    try:
        key = job_key("test-count", {"n": 30, "sleep": 0.1})
        path = ws / "jobs" / f"{key}.json"
        wait_for(lambda: path.is_file() and json.loads(path.read_text())["status"] == "running", 60, 0.1,
                 what="the other process to record its job as running")
        # while that process lives, another one does not call its job interrupted
        assert JobManager(ws).get(key).status == jobs.RUNNING
    finally:
        proc.kill()
        proc.wait()
    restarted = JobManager(ws)
    job = restarted.get(key)
    assert job.status == jobs.INTERRUPTED and "stopped" in job.error
    assert json.loads(path.read_text())["status"] == "interrupted"
    again = restarted.rerun(key)
    assert again.wait(30) and again.status == jobs.DONE and again.runs == 2


def test_forget_and_unknown_kind(mgr):
    job = mgr.submit("test-count", {"n": 1})
    assert job.wait(5)
    mgr.forget(job.key)
    assert mgr.get(job.key) is None
    with pytest.raises(KeyError):
        mgr.submit("no-such-kind", {})


def test_progress_never_goes_backward(mgr):
    @job_kind("test-backward")
    def back(params: dict, ctx: JobContext) -> None:
        ctx.progress("a", 0.6)
        ctx.progress("b", 0.2)

    job = mgr.submit("test-backward", {})
    assert job.wait(5) and job.status == jobs.DONE
    assert job.message == "done" and job.fraction == 1.0


def test_cancelled_is_raised_inside_the_function(mgr):
    seen = []

    @job_kind("test-sees-cancel")
    def sees(params: dict, ctx: JobContext) -> None:
        ctx._job.cancel()
        try:
            ctx.check_cancel()
        except Cancelled:
            seen.append(True)
            raise

    job = mgr.submit("test-sees-cancel", {})
    assert job.wait(5) and job.status == jobs.CANCELLED and seen == [True]


def test_start_variant_job_keeps_the_parent_untouched(demo, digits):
    import compression.tasks  # noqa: F401
    from nnlab.jobs import refs
    from nnlab.models.registry import model_hash
    from nnlab.workspace import Workspace

    model, rec, _ = demo
    shared, _ = refs.load_model(rec.id)
    before = model_hash(shared)
    params = {"model_id": rec.id, "data": refs.data_ref("digits"), "latency_repeats": 3,
              "configs": [{"method": "prune-unstructured", "sparsity": 0.5}], "name": ""}
    job = jobs.submit("variant", params)
    assert job.wait(120) and job.status == jobs.DONE, job.error
    out = Workspace().load_variant(job.result["variant_id"])
    assert out is not None and out.parent == rec.id and out.method == "prune-unstructured"
    assert model_hash(shared) == before  # the model every session shares was not touched


def _queued(mgr, *waiting) -> None:
    wait_for(lambda: all(mgr.ahead_of(j.key) for j in waiting), 10, what="the jobs to wait for the heavy slot")


def test_the_selection_goes_first_and_a_queued_job_says_what_it_waits_behind(mgr):
    GATES["prio"] = threading.Event()
    a = mgr.submit("test-count", {"n": 1, "gate": "prio"})
    wait_for(lambda: a.status == jobs.RUNNING, 10, what="the first job to take the heavy slot")
    background = mgr.submit("test-count", {"n": 2, "tag": "background"})
    chosen = mgr.submit("test-count", {"n": 3, "tag": "chosen"}, priority=jobs.SELECTION)
    _queued(mgr, background, chosen)
    assert mgr.ahead_of(chosen.key) == [a]  # only the running job blocks the selection's job
    assert mgr.ahead_of(background.key) == [chosen, a]  # the background job waits behind both
    assert mgr.ahead_of(a.key) == [] and chosen.snapshot()["priority"] == jobs.SELECTION
    GATES["prio"].set()
    assert background.wait(10) and chosen.wait(10)
    assert chosen.started <= background.started and background.started >= chosen.finished - 1e-3


def test_a_job_moved_up_runs_next_and_asking_for_it_again_raises_its_priority(mgr):
    GATES["up"] = threading.Event()
    a = mgr.submit("test-count", {"n": 1, "gate": "up"})
    wait_for(lambda: a.status == jobs.RUNNING, 10, what="the first job to take the heavy slot")
    chosen = mgr.submit("test-count", {"n": 2, "tag": "chosen"}, priority=jobs.SELECTION)
    later = mgr.submit("test-count", {"n": 3, "tag": "later"})
    _queued(mgr, chosen, later)
    assert mgr.move_up(later.key) and later.priority > chosen.priority
    assert mgr.ahead_of(chosen.key) == [later, a] and not mgr.move_up(a.key)  # a running job cannot move
    other = mgr.submit("test-count", {"n": 4, "tag": "other"})
    _queued(mgr, other)
    assert mgr.submit("test-count", {"n": 4, "tag": "other"}, priority=jobs.SELECTION) is other
    assert other.priority == jobs.SELECTION and mgr.ahead_of(other.key) == [later, chosen, a]
    GATES["up"].set()
    assert later.wait(10) and chosen.wait(10) and other.wait(10)
    assert later.started <= chosen.started <= other.started


def test_release_cancels_only_the_jobs_no_other_session_owns(mgr):
    GATES["rel"] = threading.Event()
    mine = mgr.submit("test-count", {"n": 1, "gate": "rel"}, owner="s1")
    shared = mgr.submit("test-count", {"n": 2, "tag": "shared"}, owner="s1")
    mgr.submit("test-count", {"n": 2, "tag": "shared"}, owner="s2")
    kept = mgr.submit("test-count", {"n": 3, "tag": "kept"}, owner="s1")
    wait_for(lambda: mine.status == jobs.RUNNING, 10, what="the first job to take the heavy slot")
    cancelled = mgr.release("s1", keys=[mine.key, shared.key])
    assert cancelled == [mine] and mine.cancel_requested
    assert shared.owners == ["s2"] and not shared.cancel_requested and kept.owners == ["s1"]
    GATES["rel"].set()
    assert mine.wait(10) and mine.status == jobs.CANCELLED
    assert shared.wait(10) and shared.status == jobs.DONE and kept.wait(10) and kept.status == jobs.DONE
    assert mgr.release("") == [] and mgr.release("s1") == []  # nothing active left to release
