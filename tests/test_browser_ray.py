"""A sweep from the browser on local Ray (issue 14): live per-task progress, results on the Pareto page, and a
working Cancel."""

from __future__ import annotations

import json
import re

import pytest
import ray  # noqa: F401 - pinned in requirements.txt (the server's sweeps need it): missing fails, never skips

from nnlab.workspace import Workspace
from tests.browser import CHROMIUM, CHROMIUM_ARGS, no_exception, require_chromium, server


def _search(page, url: str, candidates: list) -> None:
    page.goto(f"{url}/compress_pareto")
    page.get_by_text("Automatic search").first.wait_for()
    page.get_by_text("Run the tasks on Ray").first.click()
    keep = page.get_by_role("checkbox", name="Keep every variant (not only the frontier)")
    if not keep.is_checked():  # every measured candidate is stored, not only the frontier
        page.get_by_text("Keep every variant (not only the frontier)").first.click()
    area = page.get_by_label("Candidates (JSON: a list of pipelines, each a list of method configs)")
    area.fill(json.dumps(candidates))
    area.press("Control+Enter")
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="Run search").click()


@pytest.mark.slow
def test_sweep_on_local_ray_from_the_browser_with_per_task_progress_and_cancel(demo):
    from playwright.sync_api import sync_playwright

    base = demo[1]
    before = {r.id for r in Workspace().list_variants()}
    env = {"NNLAB_RAY": "1", "NNLAB_RAY_CPUS": "2"}
    short = [[{"method": "prune-unstructured", "sparsity": s}] for s in (0.21, 0.42)]
    long = [[{"method": "prune-unstructured", "sparsity": 0.3, "finetune_epochs": 50}],
            [{"method": "prune-unstructured", "sparsity": 0.6, "finetune_epochs": 50}]]
    with server(env, timeout=180) as url, sync_playwright() as p:
        require_chromium()
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1300, "height": 1000}).new_page()
            page.set_default_timeout(300_000)
            _search(page, url, short)
            page.get_by_text(re.compile(r"task \d: ")).first.wait_for()  # per-task progress, live
            page.get_by_text(re.compile(r"Search done in")).first.wait_for()
            no_exception(page)
            made = [r for r in Workspace().list_variants() if r.id not in before]
            assert len(made) == 2 and all(r.parent == base.id for r in made)
            assert all(r.extra.get("executor") == "ray" for r in made), [r.extra.get("executor") for r in made]

            _search(page, url, long)
            page.get_by_text(re.compile(r"task \d: .*(epoch|started)")).first.wait_for()
            page.get_by_role("button", name="Cancel search").click()
            page.get_by_text("Search cancelled").first.wait_for(timeout=120_000)
            no_exception(page)
        finally:
            browser.close()
    after = [r for r in Workspace().list_variants() if r.id not in before]
    assert len(after) == 2  # the cancelled sweep stored no variant, half-written or not
    ws = Workspace()
    leftovers = [d for d in (ws.root / "variants").iterdir() if d.is_dir() and not (d / "record.json").exists()
                 and not d.name.startswith(".")]
    assert not leftovers, leftovers
