"""The running server in headless chromium: a pruning run from the lab with live progress, then the
Pareto plot (a point selected opens the comparison) and the side-by-side page."""

from __future__ import annotations

from urllib.parse import urlparse

import re
import time

import pytest

from compression.pareto import frontier
from nnlab.workspace import Workspace
from tests.browser import browser_page, navigate, no_exception


@pytest.mark.slow
def test_lab_pareto_compare_in_browser(demo, tmp_path, shared_server):
    _, base, _ = demo
    before = {r.id for r in Workspace().list_variants()}
    with browser_page() as page:  # the shared server runs with no file watcher
        page.goto(shared_server)
        page.get_by_role("link", name="Compression lab").click()  # in-app navigation, one browser session
        run = page.get_by_role("button", name="Run", exact=True)
        run.wait_for()
        no_exception(page)
        name = page.locator(".st-key-lab_name input")  # a name of its own: a new job even when the suite ran
        name.fill(f"browser run {time.time_ns()}")    # the same first-click pruning before (jobs are shared)
        name.press("Enter")
        run.click()  # the default method: 50 % unstructured pruning
        page.get_by_text(re.compile(r"measuring the variant|pruning|starting")).first.wait_for()  # live progress
        page.get_by_text(re.compile(r"Done in [0-9.]+ s")).first.wait_for(timeout=180_000)
        no_exception(page)
        made = [r for r in Workspace().list_variants() if r.id not in before]
        assert len(made) == 1 and made[0].method == "prune-unstructured"
        assert abs(made[0].extra.get("seconds", 0)) < 180
        page.get_by_text(f"accuracy {made[0].accuracy:.2%}").first.wait_for()
        page.screenshot(path=str(tmp_path / "lab.png"), full_page=True)

        navigate(page, "Pareto", "Accuracy vs size")
        records = [base, *[r for r in Workspace().list_variants() if r.parent == base.id]]
        front = frontier(records, "size")
        page.get_by_text(f"{front[0].name} ({front[0].accuracy:.2%})").first.wait_for()
        points = page.locator(".js-plotly-plot .scatterlayer .trace .points path")
        points.first.wait_for()
        assert points.count() >= 2
        no_exception(page)
        points.nth(1).click(force=True)  # select a variant's bubble
        page.get_by_text(re.compile("^Selected: ")).first.wait_for()
        page.screenshot(path=str(tmp_path / "pareto.png"), full_page=True)
        page.get_by_role("button", name="Open the comparison").click()

        page.get_by_text(re.compile("Changed predictions")).first.wait_for()
        page.get_by_text(re.compile(r"test samples change their predicted class")).first.wait_for()
        assert urlparse(page.url).path.endswith("/compress_compare")
        no_exception(page)
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
