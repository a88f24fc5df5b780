"""The running server in headless chromium: the filters and the deconvnet pages render for the demo model.

Pages are opened through the app's navigation (a fresh session opened on a page URL directly is run by
Streamlit's legacy pages/ discovery, without the app frame).
"""

from __future__ import annotations

from tests.browser import browser_page, navigate, no_exception


def test_filters_and_deconvnet_pages_in_browser(demo, tmp_path, shared_server) -> None:
    with browser_page() as page:
        page.goto(shared_server)
        page.get_by_text("Test accuracy").first.wait_for()
        navigate(page, "Filters and weights", "Mean L1 norm")
        page.get_by_text("Weight histograms").first.wait_for()
        assert page.get_by_text("Data and model").count() == 1  # inside the app frame
        assert page.locator('[data-testid="stImage"]').count() >= 1
        no_exception(page)
        page.screenshot(path=str(tmp_path / "filters.png"), full_page=True)
        navigate(page, "Deconvnet and attributions", "IG delta:")
        page.get_by_text("Deconvnet (Zeiler & Fergus) →").first.wait_for()
        assert page.locator('[data-testid="stImage"]').count() >= 8  # the input and seven maps
        no_exception(page)
        page.screenshot(path=str(tmp_path / "attributions.png"), full_page=True)
