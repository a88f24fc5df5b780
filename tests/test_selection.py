"""The sidebar's choices are a draft until loaded (issue 22): nothing heavy starts for a combination the user has
not loaded, the Load button loads exactly the draft, a checkpoint that does not fit is refused before anything is
stored, and the demo model trains only when asked (releasing a left selection's jobs: tests/test_jobs.py)."""

from __future__ import annotations

import torch

from nnlab.jobs import manager as jobs
from tests.conftest import app_test, small_preprocessing


def _job_count() -> int:
    return len(jobs.manager().list())


def test_a_changed_choice_starts_nothing_until_load(demo):
    at = app_test("pages/overview.py")
    at.run()
    assert not at.exception, at.exception
    assert at.button(key="sel_load").disabled  # nothing to load: the draft is what is loaded
    before = _job_count()
    at.session_state["arch"] = "resnet18"
    at.session_state["weights"] = "Random weights (untrained)"
    small_preprocessing(at, "resnet18", side=16, channels=1)
    at.run()
    assert not at.exception, at.exception
    assert _job_count() == before  # a draft starts no job
    assert not at.button(key="sel_load").disabled
    assert any("draft" in c.value for c in at.sidebar.caption)
    assert at.query_params["arch"] == "demo-cnn"  # the URL names what is shown, not the draft
    assert any(m.label == "Test accuracy" for m in at.metric)  # the page still shows the loaded demo model
    at.button(key="sel_load").click().run()
    assert not at.exception, at.exception
    assert at.query_params["arch"] == "resnet18" and at.query_params["weights"] == "random"
    assert at.session_state["nnlab_loaded"]["arch"] == "resnet18"  # (its model may be stored by an earlier test)
    assert "ResNet-18" in at.caption[0].value


def test_a_bad_checkpoint_cannot_be_loaded_and_a_good_one_is_checked_against_the_class_count(demo, tmp_path):
    import io

    at = app_test("pages/overview.py")
    at.session_state["weights"] = "Upload a checkpoint (.pt/.pth/.safetensors)"
    at.run()
    assert at.button(key="sel_load").disabled  # no file yet
    wrong = demo[0].state_dict()
    head = [k for k, v in wrong.items() if v.ndim == 2][-1]  # the classifier's weight: 10 classes → 3
    wrong = {k: (v[:3] if k == head or k == head.replace("weight", "bias") else v) for k, v in wrong.items()}
    buf = io.BytesIO()
    torch.save({f"module.{k}": v for k, v in wrong.items()}, buf)
    before = _job_count()
    at.file_uploader(key="checkpoint").set_value(("mine.pt", buf.getvalue(), "application/octet-stream")).run()
    assert not at.exception, at.exception
    assert at.button(key="sel_load").disabled and any("cannot be used" in e.value for e in at.sidebar.error)
    assert _job_count() == before


def test_the_demo_model_on_a_new_folder_is_offered_not_trained(tmp_path):
    from nnlab.data.synthetic import make_shapes_folder

    folder = make_shapes_folder(tmp_path / "shapes", per_class=4, size=16)
    at = app_test("pages/overview.py")
    at.session_state["dataset"] = "imagefolder"
    at.session_state["dataset_path"] = str(folder)
    before = {j.key for j in jobs.manager().list()}
    at.run()
    assert not at.exception, at.exception
    assert at.button(key="train_demo")  # offered
    assert {j.key for j in jobs.manager().list()} == before  # not started, nothing decoded


def test_the_jobs_page_says_what_a_queued_job_waits_behind_and_lets_the_user_move_it_up_or_cancel_the_blocker():
    import threading
    import time

    from tests.waiting import wait_for

    gate = threading.Event()

    @jobs.job_kind("test-sel-blocker", label=lambda p: "the long background job")
    def blocker(params: dict, ctx: jobs.JobContext) -> None:
        while not gate.wait(0.05):
            ctx.check_cancel()

    @jobs.job_kind("test-sel-waiting", label=lambda p: f"waiting job {p['n']}")
    def waiting(params: dict, ctx: jobs.JobContext) -> None:
        return None

    mgr, stamp = jobs.manager(), time.time()
    a = mgr.submit("test-sel-blocker", {"t": stamp})
    try:
        wait_for(lambda: a.status == jobs.RUNNING, 30, what="the blocker to take the heavy slot")
        b = mgr.submit("test-sel-waiting", {"n": 1, "t": stamp})
        c = mgr.submit("test-sel-waiting", {"n": 2, "t": stamp}, priority=jobs.SELECTION)
        wait_for(lambda: mgr.ahead_of(b.key) and mgr.ahead_of(c.key), 10, what="both to wait for the slot")
        at = app_test("pages/jobs.py")
        at.run()
        assert not at.exception, at.exception
        bars = [el.proto.text for el in at.get("progress")]
        assert any("waiting job 1" in t and "waiting for a free worker behind: waiting job 2" in t for t in bars), bars
        assert any("waiting job 2" in t and "behind: the long background job" in t for t in bars), bars
        at.button(key=f"jobs_up_{b.key}").click().run()  # the user moves the background job up
        assert not at.exception, at.exception
        assert b.priority > c.priority and mgr.ahead_of(c.key)[0] is b
        at.button(key=f"jobs_block_{b.key}").click().run()  # and cancels what it waits for
        assert b.wait(30) and c.wait(30) and a.wait(30)
        assert a.status == jobs.CANCELLED and b.status == c.status == jobs.DONE and b.started <= c.started
    finally:
        gate.set()
        a.cancel()
