"""The running server in headless chromium: the Overview shows the demo model's accuracy."""

from __future__ import annotations

import re

from tests.browser import browser_page, no_exception, server


def test_overview_in_browser(demo, digits, tmp_path):
    model, rec, _ = demo
    from nnlab.evaluate import evaluate

    acc = f"{evaluate(model, digits, 'test').accuracy:.2%}"
    with server() as url, browser_page() as page:
        page.goto(url)
        page.get_by_text("Test accuracy").first.wait_for()
        page.get_by_text(acc).first.wait_for()
        no_exception(page)
        assert page.get_by_text(re.compile("Digits")).count() > 0
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)


def test_deep_link_keeps_the_frame(demo):
    """A fresh server opened straight on a page URL still shows app.py's navigation and sidebar pickers."""
    with server() as url, browser_page() as page:
        page.goto(f"{url}/inside_filters")
        page.get_by_text("Filters and weights").first.wait_for()
        page.get_by_text("Data and model").first.wait_for()
        page.get_by_text("Look inside").first.wait_for()
        no_exception(page)
        assert page.get_by_text("inside input").count() == 0  # not the legacy pages/ folder listing
