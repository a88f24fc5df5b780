"""The running server in headless chromium: the Overview shows the demo model's accuracy."""

from __future__ import annotations

from urllib.parse import urlparse

import re

import pytest

from tests.browser import browser_page, no_exception, server


def test_overview_in_browser(demo, digits, tmp_path, shared_server):
    model, rec, _ = demo
    from nnlab.evaluate import evaluate

    acc = f"{evaluate(model, digits, 'test').accuracy:.2%}"
    with browser_page() as page:
        page.goto(shared_server)
        page.get_by_text("Test accuracy").first.wait_for()
        page.get_by_text(acc).first.wait_for()
        no_exception(page)
        assert page.get_by_text(re.compile("Digits")).count() > 0
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)


@pytest.mark.slow
def test_deep_link_keeps_the_frame(demo):
    """A fresh server opened straight on a page URL shows that page in app.py's frame (navigation menu and
    sidebar pickers) from the first render: never the legacy pages/ folder listing, never "Page not found"."""
    with server() as url, browser_page() as page:
        seen: list[str] = []
        page.goto(f"{url}/inside_filters")
        for _ in range(60):  # sample what the user sees while the first load settles
            seen.append(page.locator("body").inner_text())
            if "Data and model" in seen[-1] and "Filters and weights" in seen[-1] and "Conv" in seen[-1]:
                break
            page.wait_for_timeout(250)
        page.get_by_text("Data and model").first.wait_for()
        page.get_by_text("Look inside").first.wait_for()
        no_exception(page)
        legacy = ("inside filters", "compress compare", "diagnose goal", "Page not found", "does not seem to exist")
        assert not [t for t in seen if any(w in t for w in legacy)], [t[:300] for t in seen if any(
            w in t for w in legacy)][:1]
        assert urlparse(page.url).path.endswith("/inside_filters")
        page.get_by_role("link", name="Overview").first.click()  # the frame's own menu navigates
        page.get_by_text("Test accuracy").first.wait_for()
