"""map_tasks on a real local Ray (2 CPUs): started from a thread that ends, progress, threads, failures, cancel."""

from __future__ import annotations

import threading
import time

import pytest
import ray  # noqa: F401 - pinned in requirements.txt: missing is a failure, not a skip

from nnlab.jobs import pieces as distributed
from nnlab.jobs.pieces import map_tasks



# Piece functions live here (Ray workers import this module by name; it stays light: no compression import).

def square(piece: dict, report) -> dict:
    import torch

    report("half way", 0.5)
    report("done", 1.0)
    return {"y": piece["x"] ** 2, "threads": torch.get_num_threads(), "node": report.node}


def fail_on_three(piece: dict, report) -> dict:
    if piece["x"] == 3:
        raise RuntimeError("three is bad")
    return {"y": piece["x"]}


def wait_for_cancel(piece: dict, report) -> dict:
    """Runs until cancelled (up to 60 s), reporting progress."""
    for k in range(6000):
        report.check_cancel()
        report(f"step {k}", k / 6000)
        time.sleep(0.01)
    return {"x": piece["x"]}


def die(piece: dict, report) -> dict:
    """Its worker process dies (SIGKILL) every time it runs."""
    import os
    import signal

    if piece.get("die"):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"x": piece["x"]}


CLEANED: list[int] = []


def note_cleanup(piece: dict) -> None:
    CLEANED.append(piece["x"])


@pytest.fixture(scope="module")
def local_ray():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NNLAB_RAY", "1")
        mp.setenv("NNLAB_RAY_CPUS", "2")
        mp.delenv("NNLAB_RAY_ADDRESS", raising=False)
        distributed.shutdown_ray()
        # Start Ray from short-lived threads, as Streamlit's script threads and job threads would: Ray's
        # processes must survive the thread that asked for them.
        got: list = []
        threads = [threading.Thread(target=lambda: got.append(distributed.ensure_ray())) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        yield got
        distributed.shutdown_ray()


def test_started_once_from_threads_that_ended(local_ray):
    assert len(local_ray) == 3 and all(ex is local_ray[0] for ex in local_ray)  # one Ray, never re-initialised
    ex = local_ray[0]
    assert ex.kind == "ray" and ex.address == "local" and ex.cpus == 2 and ex.nodes == 1, ex
    assert ray.is_initialized()
    assert ray.get(ray.put(41)) == 41  # the local Ray is alive after its starting threads ended


def test_results_progress_and_threads_on_ray(local_ray):
    seen = []
    res = map_tasks(square, [{"x": i} for i in range(4)], lambda i, m, f: seen.append((i, m, f)), use_ray=True,
                    threads_per_task=1)
    assert [r.value["y"] for r in res] == [0, 1, 4, 9]
    assert all(r.ok and r.executor == "ray" and r.attempts == 1 for r in res)
    assert all(r.value["threads"] == 1 == r.threads for r in res)
    assert all("/" in r.node for r in res)  # host/ray-node-id
    for i in range(4):  # every task's reports reached this thread, in order
        mine = [(m, f) for j, m, f in seen if j == i]
        assert mine[0][0].startswith("started on ") and " pid " in mine[0][0] and mine[0][1] == 0.0
        assert mine[-1] == ("done", 1.0)


def test_two_threads_per_task_on_ray(local_ray):
    res = map_tasks(square, [{"x": 2}], use_ray=True, threads_per_task=2)
    assert res[0].ok and res[0].value["threads"] == 2 and res[0].threads == 2


def test_an_exception_fails_its_piece_without_retry(local_ray):
    res = map_tasks(fail_on_three, [{"x": i} for i in range(5)], use_ray=True)
    assert [r.status for r in res] == ["ok", "ok", "ok", "failed", "ok"]
    assert "three is bad" in res[3].error and res[3].attempts == 1


def test_cancel_stops_every_task(local_ray):
    CLEANED.clear()
    started = {}

    def progress(i: int, message: str, fraction: float) -> None:
        if message.startswith("step"):
            started.setdefault(i, time.monotonic())

    t0 = time.monotonic()
    res = map_tasks(wait_for_cancel, [{"x": i} for i in range(4)], progress, cancel=lambda: len(started) >= 2,
                    use_ray=True, cleanup=note_cleanup)
    took = time.monotonic() - t0
    assert [r.status for r in res] == ["cancelled"] * 4
    assert took < 45, took  # far less than the 60 s a piece would run
    assert sorted(CLEANED) == [0, 1, 2, 3]


def test_a_worker_lost_every_time_is_retried_once_then_reported(local_ray):
    seen = []
    res = map_tasks(die, [{"x": 0}, {"x": 1, "die": True}], lambda i, m, f: seen.append((i, m)), use_ray=True,
                    max_retries=1, cleanup=note_cleanup)
    assert res[0].ok and res[0].attempts == 1
    assert res[1].status == "failed" and res[1].attempts == 2 and "worker lost after 2 attempt(s)" in res[1].error
    assert [m for i, m in seen if i == 1 and m.startswith("started")][-1].endswith("(attempt 2)")
