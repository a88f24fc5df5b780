"""The galleries in headless chromium: the label-error gallery (three decisions, then the CSV holds exactly those;
an image in every card; a screenshot for docs/), and the Worst-errors cards, whose rendered text must be what the
page meant to write (no emoji that a system without an emoji font would draw as empty boxes)."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from diagnostics import errors
from diagnostics import tasks as dtasks
from nnlab.evaluate import evaluate
from nnlab.workspace import Workspace
from tests import noisy_digits
from tests.browser import browser_page, no_exception, pick_image_folder
from tests.test_glyphs import forbidden

ROOT = Path(__file__).resolve().parents[1]
DOCS_SHOT = ROOT / "docs" / "label-gallery.png"


@pytest.fixture(scope="module")
def noisy(demo):
    return noisy_digits.make(Path(os.environ["NNLAB_WORKSPACE"]).parent)


def _card_index(card, prefix: str) -> int:
    cls = card.get_attribute("class") or ""
    return int(re.search(rf"st-key-{prefix}(\d+)", cls).group(1))


def _pick_dataset_folder(page, path: Path) -> None:
    """In the sidebar: Dataset = ImageFolder, then type the folder's path."""
    pick_image_folder(page, path)
    page.wait_for_function("() => { const b = document.querySelector('.st-key-sel_load button'); "
                           "return !!b && !b.disabled; }")  # the sidebar is a draft until Load (issue 22)
    page.locator(".st-key-sel_load button").first.click()


@pytest.mark.slow
def test_label_gallery_decisions_download_as_csv(noisy, tmp_path, shared_server):
    rep = dtasks.load_data_report(Workspace(), noisy.model_id, noisy.data.id)
    n = len(rep.label_train_index)
    with browser_page() as page:
        page.goto(f"{shared_server}/diagnose_data")
        page.get_by_text("Class balance").first.wait_for()
        _pick_dataset_folder(page, noisy.path)
        gallery = page.locator(".st-key-label_gallery")
        gallery.wait_for()
        cards = gallery.locator('[class*="st-key-label_card_"]')
        cards.first.wait_for()
        no_exception(page)
        shown = [_card_index(cards.nth(i), "label_card_") for i in range(cards.count())]
        assert shown == rep.label_train_index[:len(shown)].tolist() and len(shown) == min(12, n)
        for i in range(cards.count()):  # the suspected error's own image in every card, decoded by the browser
            img = cards.nth(i).locator('[data-testid="stImage"] img').first
            img.wait_for()
            assert img.evaluate("el => el.complete && el.naturalWidth > 0")
        marks = {shown[0]: "label wrong", shown[1]: "label right", shown[2]: "unsure"}
        for k, (idx, decision) in enumerate(marks.items(), start=1):
            card = gallery.locator(f".st-key-label_card_{idx}")
            card.get_by_text(decision, exact=True).click()
            page.get_by_text(re.compile(rf"^{k} of {n} decided")).first.wait_for()
        no_exception(page)
        page.set_viewport_size({"width": 1400, "height": 3600})  # tall: the app scrolls inside, the shot must not
        section = page.locator(".st-key-label_errors")
        section.scroll_into_view_if_needed()
        page.wait_for_function("!document.querySelector('[data-stale=\"true\"]') && "
                               "[...document.querySelectorAll('.st-key-label_gallery img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # painted
        shot = tmp_path / "label-gallery.png"
        section.screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000
        if os.environ.get("NNLAB_DOCS_SCREENSHOTS") == "1":  # refresh the committed screenshot on purpose only
            shutil.copyfile(shot, DOCS_SHOT)
        with page.expect_download() as dl:
            page.locator(".st-key-label_dl_decisions button:visible").first.click()
        rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        assert {int(r["train_index"]): r["decision"] for r in rows} == marks  # exactly those three
        classes = noisy.data.classes
        for r in rows:
            pos = shown.index(int(r["train_index"]))
            assert r["given_class"] == classes[rep.labels.given[pos]]
            assert r["suggested_class"] == classes[rep.labels.suggested[pos]]
        with page.expect_download() as dl:
            page.locator(".st-key-label_dl_relabel button:visible").first.click()
        relabel = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        assert [(int(r["train_index"]), int(r["new_label"])) for r in relabel] == [
            (shown[0], int(rep.labels.suggested[0]))]


def test_worst_error_cards_render_the_text_the_page_meant(demo, digits, shared_server):
    model = demo[0]
    ev = evaluate(model, digits, "test")
    order = errors.rank_samples(ev.probs, ev.losses, ev.labels, "loss", None, None, True)[:12]
    classes = digits.classes
    with browser_page() as page:
        page.goto(f"{shared_server}/diagnose_worst")
        cards = page.locator('[class*="st-key-worst_card_test_"]')
        cards.first.wait_for()
        page.locator('[class*="st-key-worst_card_test_"] [data-testid="stMarkdownContainer"]').first.wait_for()
        expect(cards).to_have_count(len(order))  # cards are drawn one after another: wait for all of them
        no_exception(page)
        try:  # the icon font loads when the first icon is drawn: wait for it (a minute), do not sample it once
            page.wait_for_function("document.fonts.status === 'loaded' && "
                                   "document.fonts.check('24px \"Material Symbols Rounded\"')", timeout=60_000)
        except PlaywrightTimeout:
            raise AssertionError("Streamlit's icon font is not loaded: icons would show as words") from None
        for k in range(cards.count()):
            card = cards.nth(k)
            i = _card_index(card, "worst_card_test_")
            assert i == int(order[k])
            t, p = int(ev.labels[i]), int(ev.preds[i])
            meant = (f"{'right' if t == p else 'wrong'} · true {classes[t]} · predicted {classes[p]}\n"
                     f"loss {ev.losses[i]:.3f} · p(pred) {ev.probs[i, p]:.2f} · p(true) {ev.probs[i, t]:.2f}")
            text = card.locator('[data-testid="stMarkdownContainer"]').filter(has_text="predicted").first
            assert text.inner_text().strip() == meant
            button = card.get_by_role("button", name=re.compile("Attributions"))
            icon = button.locator('[data-testid="stIconMaterial"]').inner_text()
            assert button.inner_text().replace(icon, "").strip() == "Attributions"
            assert not forbidden(card.inner_text()), forbidden(card.inner_text())
        assert not forbidden(page.locator("body").inner_text())  # nothing anywhere on the page
