"""Long work as shared background jobs, through the real server in headless chromium (issue 10):

- first start: the demo model trains once while the user clicks through pages and closes the tab; the progress
  shown never goes backward;
- two sessions asking for the same check share one job: both follow it, either may cancel it, a cancelled job
  stores nothing;
- a server killed during a job lists it as interrupted after a restart, and finished results still load.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from nnlab.jobs.manager import job_key
from tests.browser import CHROMIUM, CHROMIUM_ARGS, free_port, no_exception, require_chromium, server
from tests.waiting import wait_for

DEMO_PROGRESS = re.compile(r"Train the demo model on digits: (\d+)%")


def _launch(p):
    require_chromium()
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def _page(browser):
    page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
    page.set_default_timeout(240_000)
    return page


def _percent(page) -> int | None:
    """The demo-training progress the page shows now (None when it shows none)."""
    loc = page.get_by_text(DEMO_PROGRESS)
    if loc.count() == 0:
        return None
    m = DEMO_PROGRESS.search(loc.first.inner_text())
    return int(m.group(1)) if m else None


def _wait_percent(page, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = _percent(page)
        if v is not None:
            return v
        page.wait_for_timeout(200)
    raise AssertionError("no training progress shown")


@pytest.mark.slow
def test_first_start_trains_once_across_pages_and_a_closed_tab(tmp_path):
    from playwright.sync_api import sync_playwright

    log = tmp_path / "server.log"
    env = {"NNLAB_WORKSPACE": str(tmp_path / "ws"), "NNLAB_DEMO_EPOCHS": "60"}
    seen: list[int] = []
    with server(env, log=log) as url, sync_playwright() as p:
        browser = _launch(p)
        try:
            page = _page(browser)
            page.goto(url)
            page.get_by_role("button", name="Train nnlab's demo model").click()  # offered, never started by itself
            seen.append(_wait_percent(page))
            for name, path in (("Errors by class", "diagnose_classes"), ("Worst errors", "diagnose_worst"),
                               ("Data checks", "diagnose_data")):
                page.get_by_role("link", name=name).first.click()
                # the path, whatever query the page carries (e.g. "…/diagnose_data?dataset=digits&…"): a glob
                # "**/diagnose_data" would never match such a URL
                page.wait_for_url(lambda u, path=path: urlparse(u).path.rstrip("/").endswith(f"/{path}"))
                seen.append(_wait_percent(page))
            page.context.close()  # the tab is gone; the training is not: it goes on with no page open
            state_file = tmp_path / "ws" / "jobs" / f"{_demo_key()}.json"

            def trained_on() -> bool:  # past the last percentage a page showed (rounded as the page rounds it)
                state = json.loads(state_file.read_text())
                return state["status"] == "done" or int(f"{state['fraction']:.0%}"[:-1]) > seen[-1]

            wait_for(trained_on, 120, 0.2, what="the demo training to advance with no tab open")
            page = _page(browser)
            page.goto(url)
            while (v := _percent(page)) is not None or page.get_by_text("Test accuracy").count() == 0:
                if v is not None:
                    seen.append(v)
                page.wait_for_timeout(500)
            page.get_by_text("Test accuracy").first.wait_for()
            no_exception(page)
        finally:
            browser.close()
    text = log.read_text()
    assert text.count("nnlab: training demo-cnn-digits") == 1, text[-3000:]
    assert len(seen) >= 4 and seen == sorted(seen), seen  # progress never went backward (one reading per page)
    assert seen[-1] > seen[0]
    state = json.loads((tmp_path / "ws" / "jobs" / f"{_demo_key()}.json").read_text())
    assert state["status"] == "done" and state["runs"] == 1


def _demo_key() -> str:
    return job_key("train-demo", {"data": {"key": "digits", "path": ""}, "arch": "demo-cnn"})


def _expand_retrain(page) -> None:
    """Open the k-fold expander (a rerun that redraws the page may have drawn it closed again)."""
    summary = page.locator("summary").filter(has_text="Exact check: k-fold retraining").first
    summary.wait_for()
    for _ in range(20):
        if page.get_by_label("Folds", exact=True).first.is_visible():
            return
        if summary.evaluate("el => !el.parentElement.open"):
            summary.click()
        page.wait_for_timeout(500)
    raise AssertionError("the k-fold expander does not open")


def _retrain_button(page):
    _expand_retrain(page)
    return page.get_by_role("button", name="Retrain on folds")


def _open_retrain(page, url: str, folds: int) -> None:
    page.goto(f"{url}/diagnose_data")
    page.get_by_text("Train/test mismatch").first.wait_for()  # the page has rendered (data checks done)
    page.wait_for_timeout(1000)
    _expand_retrain(page)
    box = page.get_by_label("Folds", exact=True)
    box.fill(str(folds))
    box.press("Enter")
    page.wait_for_timeout(1500)


@pytest.mark.slow
def test_two_sessions_share_one_data_check_and_either_can_cancel_it(demo, digits, shared_server):
    from playwright.sync_api import sync_playwright

    from nnlab.workspace import Workspace

    model_id = demo[1].id
    ws = Workspace()
    label = re.compile(r"Label check by 9-fold retraining")
    url = shared_server
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            a, b = _page(browser), _page(browser)
            _open_retrain(a, url, 9)
            _retrain_button(a).click()
            a.get_by_text(label).first.wait_for()  # A follows the job
            _open_retrain(b, url, 9)
            b.get_by_text(label).first.wait_for()  # B, a second session, follows the same job
            b.get_by_role("button", name="Cancel").first.click()  # B cancels it for both
            a.get_by_text(re.compile("The retraining: cancelled; nothing was stored")).first.wait_for()
            b.get_by_text(re.compile("The retraining: cancelled; nothing was stored")).first.wait_for()
            no_exception(a)
            no_exception(b)

            # the same again to the end: one job, both pages show its result
            _open_retrain(a, url, 2)
            _retrain_button(a).click()
            a.get_by_text(re.compile(r"Label check by 2-fold retraining|k-fold retraining flags")).first.wait_for()
            _open_retrain(b, url, 2)
            for page in (a, b):
                page.get_by_text(re.compile(r"k-fold retraining flags \*?\*?\d+")).first.wait_for()
                no_exception(page)
        finally:
            browser.close()
    n = len(digits.y_train)
    params9 = {"model_id": model_id, "data": {"key": "digits", "path": ""}, "n": n, "folds": 9}
    params2 = dict(params9, folds=2)
    jobs_dir = ws.root / "jobs"
    cancelled_file = jobs_dir / f"{job_key('label-retrain', params9)}.json"
    # the job's record is written when its thread ends (a fold in progress notices the cancel when it finishes)
    wait_for(lambda: json.loads(cancelled_file.read_text())["status"] != "running", 120, 0.2,
             what="the cancelled job's record to say it ended")
    cancelled = json.loads(cancelled_file.read_text())
    finished = json.loads((jobs_dir / f"{job_key('label-retrain', params2)}.json").read_text())
    assert cancelled["status"] == "cancelled" and cancelled["runs"] == 1 and len(cancelled["owners"]) == 2
    assert finished["status"] == "done" and finished["runs"] == 1
    from diagnostics.tasks import retrain_key

    assert ws.load_run(retrain_key(model_id, digits.id, n, 9)) is None  # the cancelled job stored nothing
    assert ws.load_run(retrain_key(model_id, digits.id, n, 2)) is not None


@pytest.mark.slow
def test_killed_server_lists_the_job_as_interrupted_and_keeps_finished_results(tmp_path):
    from playwright.sync_api import sync_playwright

    ws = tmp_path / "ws"
    env = {"NNLAB_WORKSPACE": str(ws)}
    port = free_port()
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            with server(env, port=port) as url:
                page = _page(browser)
                page.goto(url)
                page.get_by_role("button", name="Train nnlab's demo model").click()  # offered, not started by itself
                page.get_by_text("Test accuracy").first.wait_for()  # demo trained, evaluation stored
                page.get_by_role("link", name="Learning curves").first.click()
                box = page.get_by_label("Epochs per subset", exact=True)
                box.fill("100")
                box.press("Enter")
                page.wait_for_timeout(1500)
                page.get_by_role("button", name="Train on the subsets").click()
                page.get_by_text(re.compile(r"Learning curve of .*: \d+%")).first.wait_for()
                os.killpg(server.proc.pid, signal.SIGKILL)  # the server dies mid-job
                server.proc.wait(10)
            states = {f.stem: json.loads(f.read_text()) for f in (ws / "jobs").glob("*.json")}
            assert any(s["kind"] == "learning-curve" and s["status"] == "running" for s in states.values())
            with server(env, port=port) as url:
                page = _page(browser)
                page.goto(f"{url}/jobs")
                page.get_by_text(re.compile(r"Learning curve of .* — interrupted")).first.wait_for()
                page.get_by_role("button", name="Run again").first.wait_for()  # drawn after the job's line
                no_exception(page)
                page.goto(url)
                page.get_by_text("Test accuracy").first.wait_for()  # finished results load, nothing retrains
                no_exception(page)
                states = {f.stem: json.loads(f.read_text()) for f in (ws / "jobs").glob("*.json")}
                curve = [s for s in states.values() if s["kind"] == "learning-curve"]
                assert curve and curve[0]["status"] == "interrupted"
                assert [s["runs"] for s in states.values() if s["kind"] == "train-demo"] == [1]
        finally:
            browser.close()
    assert not list(Path(ws).glob("runs/curve_*"))  # the interrupted curve left no result behind
