"""The running server in headless chromium: the confusion matrix (a cell clicked shows its samples) and
the worst-error gallery (its button opens the attribution page)."""

from __future__ import annotations

from tests.browser import browser_page, navigate, no_exception


def test_confusion_matrix_and_worst_errors_in_browser(demo, tmp_path, shared_server) -> None:
    with browser_page() as page:
        page.goto(shared_server)
        page.get_by_text("Test accuracy").first.wait_for()
        navigate(page, "Errors by class", "Most confused pairs")
        chart = page.locator('[data-testid="stPlotlyChart"]').first
        chart.wait_for()
        assert page.locator(".js-plotly-plot .heatmaplayer").count() >= 1  # the confusion-matrix heatmap
        page.get_by_text("Samples of a cell").first.wait_for()
        no_exception(page)
        # click the top-left cell (true 0, predicted 0): its samples are shown
        box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 20, box["y"] + box["height"] / 20)  # centre of cell (0, 0)
        page.get_by_text("test samples of class 0 predicted as 0").first.wait_for(timeout=60_000)
        no_exception(page)
        page.screenshot(path=str(tmp_path / "classes.png"), full_page=True)
        navigate(page, "Worst errors", "samples match")
        page.locator('[data-testid="stImage"]').first.wait_for()
        page.get_by_role("button", name="Attributions").first.wait_for()
        no_exception(page)
        page.screenshot(path=str(tmp_path / "worst.png"), full_page=True)
        page.get_by_role("button", name="Attributions").first.click()
        page.wait_for_url("**/inside_attributions**")
        no_exception(page)
