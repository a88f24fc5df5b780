"""Eight browser sessions at once, each running its own pruning from the lab on the same cached base model:
each sees only its own result, the workspace holds every variant exactly once, the base model is unchanged."""

from __future__ import annotations

import re

import pytest

from nnlab.evaluate import evaluate
from nnlab.workspace import Workspace
from tests.browser import CHROMIUM, CHROMIUM_ARGS, no_exception, require_chromium

SPARSITIES = [0.30, 0.35, 0.40, 0.45, 0.55, 0.60, 0.65, 0.70]


@pytest.mark.slow
def test_eight_sessions_compress_the_same_model(demo, digits, shared_server):
    require_chromium()
    from playwright.sync_api import sync_playwright

    model, base, _ = demo
    accuracy = f"{evaluate(model, digits, 'test').accuracy:.2%}"
    before = {r.id for r in Workspace().list_variants()}
    url = shared_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            pages = []
            for s in SPARSITIES:  # eight independent sessions (contexts share no cookies or state)
                page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
                page.set_default_timeout(300_000)
                page.goto(f"{url}/compress_lab")
                box = page.get_by_label("sparsity", exact=True)
                box.fill(f"{s:.3f}")
                box.press("Enter")
                pages.append(page)
            for page in pages:
                page.wait_for_timeout(1500)  # the rerun that takes the typed value
                page.get_by_role("button", name="Run", exact=True).click()
            shown = []
            for page in pages:  # all eight runs were submitted before any is awaited
                done = page.get_by_text(re.compile(r"Done in [0-9.]+ s")).first
                done.wait_for()
                shown.append(done.inner_text())
                no_exception(page)
            check = browser.new_context().new_page()
            check.set_default_timeout(120_000)
            check.goto(url)
            check.get_by_text(accuracy).first.wait_for()  # the shared base model still predicts the same
        finally:
            browser.close()
    made = [r for r in Workspace().list_variants() if r.id not in before]
    assert len(made) == 8 and len({r.id for r in made}) == 8  # every variant exactly once
    assert sorted(round(r.config["sparsity"], 3) for r in made) == SPARSITIES
    assert all(r.parent == base.id for r in made)
    by_sparsity = {round(r.config["sparsity"], 3): r for r in made}
    for s, text in zip(SPARSITIES, shown):  # each session saw its own variant, not another's
        m = re.search(r"sparsity=([0-9.]+)", text)
        assert m and float(m.group(1)) == pytest.approx(s, abs=1e-6), text
        assert f"accuracy {by_sparsity[s].accuracy:.2%}" in text, text
