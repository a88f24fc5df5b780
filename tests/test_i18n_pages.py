"""Issue 24: every page of app.py renders in Russian (``?lang=ru``) through AppTest on the digits demo model, and
English stays the default without the parameter.

"Renders" covers every page: no exception. What is shown is asserted on the text that app.py (the navigation) and
the pages of this part of the issue (Train, the Diagnose pages, nnlab/ui/widgets.py) render: their titles and
captions come from the Russian catalog, numbers carry a decimal comma, and most letters are Cyrillic.
"""

from __future__ import annotations

import re

import pytest

from nnlab import i18n
from nnlab.evaluate import evaluate
from tests.conftest import ROOT, app_test
from tests.russian import CYRILLIC, cyrillic_share, ru

# Every page the router knows, read from app.py itself, so a page added there is covered here the day it is added.
PAGES = re.findall(r'st\.Page\("(pages/[a-z_]+\.py)"', (ROOT / "app.py").read_text())
# Pages whose text this part of the issue translated: their title (msgid) as app.py or the page sets it.
OWN_TITLES = {
    "pages/train.py": "Train or fine-tune",
    "pages/diagnose_goal.py": "Error against a goal",
    "pages/diagnose_classes.py": "Errors by class",
    "pages/diagnose_worst.py": "Worst errors",
    "pages/diagnose_data.py": "Data checks",
    "pages/diagnose_curves.py": "Learning curves",
}
# Pages whose prose is theirs: the goal page's body is the diagnosis that diagnostics/ writes (translated there),
# so only its own caption is checked (test_the_goal_page_frames_the_diagnosis_in_russian).
OWN_PROSE = sorted(set(OWN_TITLES) - {"pages/diagnose_goal.py"})
SECTIONS = ["Overview", "Diagnose", "Look inside", "Compress", "Jobs"]
def main_text(at) -> str:
    """The main area's prose (titles, headers, captions, markdown, alerts, metric and widget labels); the sidebar,
    which holds data-derived names (dataset, model ids), is left out."""
    main = at.main
    parts = [e.value for kind in ("title", "header", "subheader", "caption", "markdown", "info", "warning", "success",
                                  "error") for e in getattr(main, kind)]
    parts += [m.label for m in main.metric]
    parts += [w.label for kind in ("radio", "selectbox", "number_input", "checkbox", "button", "multiselect",
                                   "text_input") for w in getattr(main, kind)]
    return "\n".join(str(p) for p in parts)


def russian(page: str):
    at = app_test(page)
    at.query_params["lang"] = "ru"
    return at.run()


def test_the_router_lists_every_page():
    assert set(OWN_TITLES) | {"pages/overview.py", "pages/jobs.py", "pages/compress_lab.py"} <= set(PAGES)


def test_the_russian_catalog_has_the_navigation_and_titles():
    for msgid in [*SECTIONS, *OWN_TITLES.values()]:
        assert CYRILLIC.search(ru(msgid)), msgid


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_in_russian(demo, page):
    at = russian(page)
    assert not at.exception, (page, [e.value for e in at.exception])
    assert at.session_state["lang"] == "ru" and at.query_params["lang"] == "ru"
    # app.py's navigation: the section captions of the sidebar menu, in Russian
    captions = [c.value for c in at.sidebar.caption]
    for section in SECTIONS:
        assert ru(section) in captions, (section, captions)
    if page in OWN_TITLES:
        assert at.title[0].value == ru(OWN_TITLES[page])
    if page in OWN_PROSE:
        share = cyrillic_share(main_text(at), empty=1.0)
        # the page's own prose is translated; what stays Latin is data and symbols (class names, E_test, p(test),
        # AUC, CSV, model ids), a minority on every page
        assert share > 0.6, (page, share, main_text(at)[:2000])


@pytest.mark.parametrize("page", sorted(OWN_TITLES))
def test_english_is_the_default(demo, page):
    at = app_test(page).run()
    assert not at.exception, at.exception
    assert at.session_state["lang"] == "en" and "lang" not in at.query_params
    assert at.title[0].value == OWN_TITLES[page]
    assert not CYRILLIC.search(main_text(at))
    assert "Overview" in [c.value for c in at.sidebar.caption]


def test_numbers_carry_a_decimal_comma_in_russian(demo, digits):
    model = demo[0]
    e_test = evaluate(model, digits, "test").error
    at = russian("pages/diagnose_goal.py")
    assert not at.exception
    shown = {m.label: m.value for m in at.metric}
    assert shown["E_test"] == i18n.num(e_test, ".2%", "ru") and "," in shown["E_test"]
    en = app_test("pages/diagnose_goal.py").run()
    assert {m.label: m.value for m in en.metric}["E_test"] == f"{e_test:.2%}"


def test_the_goal_page_frames_the_diagnosis_in_russian(demo):
    at = russian("pages/diagnose_goal.py")
    assert not at.exception
    assert any(c.value.startswith("Лекция 4") for c in at.caption)
    assert at.subheader[0].value.startswith(ru("Diagnosis: {regime}").split("{")[0])
    assert at.number_input(key="goal_e_goal").label == ru("E_goal, the target test error (%)")


def test_the_language_stays_for_the_session_and_the_switch_changes_it(demo):
    # AppTest sends every widget's state back on the next run, formatting option values with the page's format_func
    # in the test's own thread: that thread must read the language the last run drew its options in
    from nnlab import i18n

    with i18n.language("ru"):
        at = russian("pages/diagnose_goal.py")
        assert at.title[0].value == ru("Error against a goal")
        at.query_params.clear()  # the session keeps its choice without the parameter
        at.run()
        assert at.title[0].value == ru("Error against a goal") and at.query_params["lang"] == "ru"
        at.sidebar.radio(key="lang").set_value("en").run()  # the sidebar switch
    assert not at.exception
    assert at.title[0].value == "Error against a goal" and "lang" not in at.query_params
