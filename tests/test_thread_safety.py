"""Pages, jobs and pieces share one process: none of them changes the warnings filters or waits for another's
long work, and no thread changes the thread count inside another thread's timed section."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
import torch

from diagnostics import attributions as A
from nnlab.jobs.pieces import map_tasks
from nnlab.models.registry import DemoCNN
from nnlab.runtimes.torch_eager import TorchRunner
from nnlab.threads import TIMING_LOCK, torch_threads

# --- a sweep piece that holds its thread setting (module level: map_tasks imports it by name) ---------------

PIECE_STARTED = threading.Event()
PIECE_RELEASE = threading.Event()
PIECE_SEEN: list[int] = []


def hold_threads(piece: dict, report) -> dict:
    """Runs under its piece's thread count until released (at most ``hold_s`` seconds)."""
    PIECE_SEEN.append(torch.get_num_threads())
    PIECE_STARTED.set()
    released = PIECE_RELEASE.wait(piece["hold_s"])
    return {"released": released, "threads": torch.get_num_threads()}


@pytest.fixture(autouse=True)
def _threads_back():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _model() -> tuple[DemoCNN, torch.Tensor]:
    torch.manual_seed(0)
    return DemoCNN(1, 10, (8, 8)).eval(), torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_a_page_forward_does_not_wait_for_a_running_sweep_piece(monkeypatch):
    monkeypatch.setenv("NNLAB_RAY", "0")
    model, x = _model()
    expected = TorchRunner(model, threads=2).predict_logits(x)
    PIECE_STARTED.clear()
    PIECE_RELEASE.clear()
    PIECE_SEEN.clear()
    results: list = []
    sweep = threading.Thread(target=lambda: results.extend(
        map_tasks(hold_threads, [{"hold_s": 2.0}], use_ray=False, threads_per_task=1)), name="sweep")
    sweep.start()
    try:
        assert PIECE_STARTED.wait(30), "the piece never started"
        t0 = time.perf_counter()
        got = TorchRunner(model, threads=2).predict_logits(x)  # what a page's forward pass goes through
        with torch_threads(2), torch.no_grad():  # and a page's own block with a thread count
            model(x)
        seconds = time.perf_counter() - t0
        piece_still_running = sweep.is_alive() and not PIECE_RELEASE.is_set()
    finally:
        PIECE_RELEASE.set()
        sweep.join(30)
    assert piece_still_running, "the page's forward pass waited for the piece to end"
    assert seconds < 1.0, f"the page's forward pass took {seconds:.2f} s while the piece held its threads"
    np.testing.assert_array_equal(got, expected)
    assert PIECE_SEEN == [1]  # the piece ran at its own thread count
    assert len(results) == 1 and results[0].ok and results[0].value["released"]


def test_no_thread_changes_the_count_inside_another_threads_timed_section(monkeypatch):
    model, x = _model()
    calls: list[tuple[str, int]] = []
    real_set = torch.set_num_threads

    def spy(n: int) -> None:
        calls.append((threading.current_thread().name, int(n)))
        real_set(n)

    monkeypatch.setattr(torch, "set_num_threads", spy)
    start = torch.get_num_threads()
    entered, done = threading.Event(), threading.Event()
    inside: list[int] = []

    def measurement() -> None:
        with TIMING_LOCK, torch_threads(1):  # a timed section, like nnlab.measure.interleaved_latency
            inside.append(torch.get_num_threads())
            entered.set()
            done.wait(30)
            inside.append(torch.get_num_threads())

    with torch_threads(start + 1) as early:  # an untimed block that began before the measurement
        assert early == start + 1 == torch.get_num_threads()
        timed = threading.Thread(target=measurement, name="timed")
        timed.start()
        assert entered.wait(30)
        calls_before = len(calls)
        with torch_threads(start + 2) as during:  # untimed, while the measurement runs: the count is left alone
            assert during == start + 1 == torch.get_num_threads()
        out = TorchRunner(model, threads=start + 3).predict_logits(x)  # and does not wait for the measurement
        assert out.shape == (4, 10)
    # the early block ended inside the measurement too: its restore waits for this thread's next call
    assert [c for c in calls[calls_before:] if c[0] != "timed"] == []
    assert torch.get_num_threads() == start + 1
    done.set()
    timed.join(30)
    assert inside == [1, 1]
    with torch_threads(None) as now:  # no measurement runs: the deferred restore happens first
        assert now == start == torch.get_num_threads()
    assert calls[-1] == (threading.current_thread().name, start)


def test_timed_sections_run_one_at_a_time():
    order: list[str] = []
    first_in, release = threading.Event(), threading.Event()

    def first() -> None:
        with TIMING_LOCK:
            order.append("first in")
            first_in.set()
            release.wait(30)
            order.append("first out")

    def second() -> None:
        with TIMING_LOCK:
            order.append("second in")

    a = threading.Thread(target=first)
    a.start()
    assert first_in.wait(30)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.2)
    assert b.is_alive()  # waits for the first measurement
    release.set()
    a.join(30)
    b.join(30)
    assert order == ["first in", "first out", "second in"]


def test_attributions_from_several_threads_leave_the_warnings_filters_alone():
    model, x = _model()
    prep = A.prepare(model, x[:1])
    layer = A.gradcam_layers(model)[0]
    A.silence_captum_notes()  # as at import (pytest gives every test a fresh copy of the filters)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:  # this thread alone, before the others start
        A.attribute(prep, x[:1], "guided_backprop", 1)
    assert not [w for w in seen if "captum" in w.filename], [str(w.message) for w in seen]  # silenced at import
    assert warnings.filters == before
    errors: list[str] = []
    go = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            own = A.prepare(model, x[:1])  # a prepared copy is hooked by one caller at a time (the page locks it)
            go.wait(30)
            for k in range(6):
                for method in ("deconvnet", "guided_backprop", "saliency", "gradcam", "guided_gradcam"):
                    a = A.attribute(own, x[k % 4:k % 4 + 1], method, (i + k) % 10, layer=layer)
                    assert np.isfinite(a.values).all()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    changed_meanwhile = 0
    while any(t.is_alive() for t in threads):  # the filters stay the same while the threads attribute, too
        changed_meanwhile += warnings.filters != before
        time.sleep(0.002)
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert changed_meanwhile == 0
    assert warnings.filters == before
