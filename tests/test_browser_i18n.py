"""Issue 24 in headless chromium: ``/?lang=ru`` shows the navigation in Russian, every page's main area reads mostly
Cyrillic, and the fonts chromium draws it with cover Cyrillic (no missing-glyph boxes).

The share threshold: a translated page still shows Latin letters that stay as they are by design — data (class
names, file names, model ids), symbols (E_test, p(test), AUC), library, format and runtime names (PyTorch, ONNX
Runtime, int8, CSV) and Plotly's axis numbers carry none. Measured on the translated Diagnose pages they are well
under a third of the letters, so a finished page sits well above one half; an untranslated page (English prose
with a Russian menu elsewhere) sits near zero. 0.5 separates the two with margin on both sides.

``NNLAB_SCREENSHOTS=1`` also writes the screenshot to docs/ (the README shows it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.browser import SETTLED, browser_page, no_exception
from tests.conftest import ROOT
from tests.russian import cyrillic_share, ru

PAGES = re.findall(r'st\.Page\("(pages/[a-z_]+\.py)"', (ROOT / "app.py").read_text())
SECTIONS = ["Overview", "Diagnose", "Look inside", "Compress", "Jobs"]
THRESHOLD = 0.5
SCREENSHOT_PAGE, SCREENSHOT = "pages/diagnose_classes.py", "ru-errors-by-class.png"
MAIN = '[data-testid="stMainBlockContainer"]'
# The main area's visible text, without Material icons: Streamlit draws them as ligatures of their names
# ("download", "check_circle"), which are words to innerText but pictures to the reader.
MAIN_TEXT = """() => {
  const main = document.querySelector('[data-testid="stMainBlockContainer"]');
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest('[data-testid="stIconMaterial"]') || !el.checkVisibility()) continue;
    parts.push(n.textContent);
  }
  return parts.join(" ");
}"""
def url_of(base: str, page: str) -> str:
    """The page's URL (Streamlit's path is the file's stem; the default page is the root) in Russian."""
    stem = Path(page).stem
    return f"{base}/{'' if page == PAGES[0] else stem}?lang=ru"


def cyrillic_families() -> set[str]:
    out = subprocess.run(["fc-list", ":lang=ru", "family"], capture_output=True, text=True, check=True).stdout
    return {f.strip() for line in out.splitlines() for f in line.split(",") if f.strip()}


@pytest.fixture(scope="module")
def page():
    with browser_page() as p:
        yield p


def open_settled(page, url: str, title: str | None = None) -> None:
    page.goto(url)
    page.locator('[data-testid="stSidebar"]').get_by_text(ru("Diagnose")).first.wait_for()
    if title:
        page.locator(MAIN).get_by_text(title).first.wait_for()
    page.locator(f"{MAIN} h1").first.wait_for()
    page.wait_for_function(SETTLED, timeout=120_000)
    page.wait_for_timeout(1000)  # a page that follows a job redraws its panel: settle once more after it
    page.wait_for_function(SETTLED, timeout=120_000)


def test_chromium_has_fonts_with_cyrillic():
    """fontconfig as referee: Debian's chromium draws with system fonts; without one covering Russian every
    Cyrillic letter would be a box (`make chromium` installs fonts-dejavu-core with chromium)."""
    if shutil.which("fc-list") is None:
        pytest.fail("fc-list (fontconfig, installed with Debian's chromium) is missing", pytrace=False)
    families = cyrillic_families()
    assert families & {"DejaVu Sans", "Liberation Sans"}, families


def test_navigation_in_russian(demo, shared_server, page):
    open_settled(page, f"{shared_server}/?lang=ru")
    no_exception(page)
    sidebar = page.locator('[data-testid="stSidebar"]')
    for section in SECTIONS:
        sidebar.get_by_text(ru(section), exact=True).first.wait_for(timeout=10_000)
    for title in ("Errors by class", "Compression lab", "Filters and weights"):
        assert sidebar.get_by_role("link", name=ru(title)).count() >= 1, title
    assert "lang=ru" in page.url
    # the menu keeps the language: a click on a link opens the page in Russian, the URL still says so
    sidebar.get_by_role("link", name=ru("Errors by class")).first.click()
    page.locator(MAIN).get_by_text(ru("Errors by class")).first.wait_for()
    page.wait_for_function("() => location.search.includes('lang=ru')", timeout=30_000)


@pytest.mark.parametrize("pg", PAGES)
def test_every_page_reads_russian(demo, shared_server, page, pg):
    open_settled(page, url_of(shared_server, pg))
    no_exception(page)
    text = page.evaluate(MAIN_TEXT)
    share = cyrillic_share(text, empty=0.0)
    print(f"cyrillic share {pg}: {share:.2f}")  # the report quotes these per page
    assert share > THRESHOLD, (pg, round(share, 2), text[:1500])


def test_screenshot_draws_cyrillic_with_fonts_that_have_it(demo, shared_server, page, tmp_path):
    """A full-page screenshot of a page in Russian; every font chromium used for its title and prose either is
    a web font Streamlit serves or a system font fontconfig lists for Russian (no fallback to boxes)."""
    page.set_viewport_size({"width": 1400, "height": 2200})
    try:
        open_settled(page, url_of(shared_server, SCREENSHOT_PAGE), ru("Confusion matrix"))
        page.locator(MAIN).locator(".js-plotly-plot").first.wait_for()
        page.wait_for_timeout(500)  # Plotly's entrance
        shot = tmp_path / SCREENSHOT
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        if os.environ.get("NNLAB_SCREENSHOTS") == "1":
            shutil.copy(shot, ROOT / "docs" / SCREENSHOT)
        cdp = page.context.new_cdp_session(page)
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})["root"]["nodeId"]
        families = cyrillic_families()
        for selector in (f"{MAIN} h1", f'{MAIN} [data-testid="stCaptionContainer"] p',
                         '[data-testid="stSidebar"] a'):
            used = []  # the fonts that drew the text of the first few matching elements (empty: no text of its own)
            for node in cdp.send("DOM.querySelectorAll", {"nodeId": root, "selector": selector})["nodeIds"][:5]:
                for n in [node, *cdp.send("DOM.querySelectorAll", {"nodeId": node, "selector": "*"})["nodeIds"]]:
                    used += cdp.send("CSS.getPlatformFontsForNode", {"nodeId": n})["fonts"]
            assert used, selector
            for f in used:
                assert f["isCustomFont"] or f["familyName"] in families, (selector, f, sorted(families))
            print(selector, sorted({(f["familyName"], f["isCustomFont"]) for f in used}))
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})
