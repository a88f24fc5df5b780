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
