"""Issue 24: one translation layer (gettext catalogs), English by default, Russian complete.

- The catalogs: every string the code marks has a Russian translation (not empty, not fuzzy), with the same
  ``{placeholders}``.
- The lint: no user-visible string literal in pages/, nnlab/ui/ or app.py bypasses the translation layer.
- The mechanics: the language per context, job threads in the asking session's language, numbers with a decimal
  comma in Russian, the language from the environment for the CLI.
"""

from __future__ import annotations

import ast
import re
import string
import threading
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from nnlab import i18n

ROOT = Path(__file__).resolve().parents[1]
PO = sorted((ROOT / "nnlab" / "locale" / "ru" / "LC_MESSAGES").glob("*.po"))


def test_every_marked_string_has_a_russian_translation():
    missing = {d: ids for d, ids in i18n.missing("ru").items() if ids}
    assert not missing, "untranslated (run `python -m nnlab.i18n` for .po entries to fill in):\n" + "\n".join(
        f"{d}: {ids[:20]}{' …' if len(ids) > 20 else ''}" for d, ids in missing.items())


def _fields(s: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(s) if f is not None}


@pytest.mark.parametrize("po", PO, ids=[p.stem for p in PO])
def test_catalog_entries_are_complete_and_keep_their_placeholders(po: Path):
    with open(po, "rb") as f:
        catalog = read_po(f, locale="ru")
    seen = 0
    for m in catalog:
        if not m.id:
            continue
        seen += 1
        ids = m.id if isinstance(m.id, (tuple, list)) else (m.id,)
        strings = m.string if isinstance(m.string, (tuple, list)) else (m.string,)
        assert not m.fuzzy, f"{po.name}: fuzzy entry {ids[0]!r}"
        assert all(s.strip() for s in strings), f"{po.name}: empty translation for {ids[0]!r}"
        for s in strings:
            assert _fields(s) == _fields(ids[0]), f"{po.name}: placeholders differ in {ids[0]!r} → {s!r}"
        if m.pluralizable:
            assert len(strings) == 3, f"{po.name}: Russian needs three plural forms for {ids[0]!r}"
    assert seen, f"{po.name} holds no entry"


def test_translation_follows_the_context_and_threads_of_jobs():
    from nnlab.i18n import _

    assert _("Overview") == "Overview"
    with i18n.language("ru"):
        assert _("Overview") == "Обзор"
        got = {}
        import contextvars

        t = threading.Thread(target=contextvars.copy_context().run, args=(lambda: got.update(v=_("Jobs")),))
        t.start()
        t.join()
        assert got["v"] == "Задачи"  # a job thread started from a Russian session speaks Russian
    assert _("Overview") == "Overview"
    assert i18n.get_language() == "en"


def test_job_manager_threads_inherit_the_language(tmp_path):
    from nnlab.i18n import _
    from nnlab.jobs import manager

    seen = {}

    @manager.job_kind("i18n-probe", heavy=False)
    def work(params, ctx):
        seen["lang"], seen["text"] = i18n.get_language(), _("Jobs")
        return {}

    m = manager.JobManager(tmp_path)
    with i18n.language("ru"):
        job = m.submit("i18n-probe", {"n": 1})
    job.wait(30)
    assert seen == {"lang": "ru", "text": "Задачи"}


def test_numbers_follow_the_language_but_copyable_values_do_not():
    assert i18n.num(3.284, ".2f", "ru") == "3,28"
    assert i18n.num(3.284, ".2f", "en") == "3.28"
    assert i18n.num(12345.6, ",.1f", "ru") == "12\u202f345,6"
    assert i18n.num(float("nan")) == "—"
    assert i18n.plotly_separators("ru") == ", "


@pytest.mark.parametrize("env,want", [({"LANG": "ru_RU.UTF-8"}, "ru"), ({"LANG": "C.UTF-8"}, "en"),
                                      ({"LANGUAGE": "ru:en", "LANG": "en_US"}, "ru"), ({}, "en"),
                                      ({"NNLAB_LANG": "en", "LANG": "ru_RU"}, "en")])
def test_cli_language_from_the_environment(env, want):
    assert i18n.language_from_env(env) == want


# ---------------------------------------------------------------------------------------------------------------
# The lint: user-visible literals in the UI code must go through _() / ngettext / pgettext.

UI_FILES = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "nnlab" / "ui").glob("*.py"))]
# Streamlit calls (and Plotly's figure text) whose positional arguments and text keywords are shown to the user.
SHOWN_CALLS = {
    "title", "header", "subheader", "caption", "markdown", "write", "text", "info", "warning", "error", "success",
    "toast", "button", "download_button", "link_button", "form_submit_button", "selectbox", "radio", "checkbox",
    "toggle", "slider", "select_slider", "number_input", "text_input", "text_area", "file_uploader", "multiselect",
    "expander", "tabs", "metric", "spinner", "status", "popover", "page_link", "segmented_control", "pills",
    "progress", "exception", "dialog", "Page",
}
SHOWN_KEYWORDS = {"label", "help", "placeholder", "caption", "title", "body", "text", "xaxis_title", "yaxis_title",
                  "legend_title", "legend_title_text", "title_text", "delta"}
TRANSLATORS = {"_", "ngettext", "pgettext", "N_"}
# Literals that are the same in every language: identifiers, units, symbols, library and format names.
ALLOWED = {
    "nnlab", "ms", "MB", "KB", "GB", "MACs", "E_train", "E_test", "E_goal", "ONNX", "OpenVINO", "PyTorch", "int8",
    "fp32", "bf16", "JSON", "CSV", "PDF", "HTML", "Grad-CAM", "SQNR", "Язык · Language", "Top-1", "%", "×",
}


def _letters(s: str) -> bool:
    return bool(re.search(r"[A-Za-zА-Яа-я]{2,}", re.sub(r"\{[^}]*\}|:material/[a-z_]+:|https?://\S+", "", s)))


def _bad_literals(node: ast.AST) -> list[ast.AST]:
    """Literal text in ``node`` shown as is (not wrapped in a translator call)."""
    if isinstance(node, ast.Call):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name in TRANSLATORS:
            return []
        if isinstance(f, ast.Attribute) and f.attr == "format":  # "literal {x}".format(...)
            return _bad_literals(f.value) + [b for a in node.args for b in _bad_literals(a)]
        return []  # another function's result: its own code is checked where the text is written
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node] if _letters(node.value) and node.value.strip() not in ALLOWED else []
    if isinstance(node, ast.JoinedStr):
        return [node] if any(_bad_literals(v) for v in node.values if isinstance(v, ast.Constant)) else []
    if isinstance(node, ast.BinOp):
        return _bad_literals(node.left) + _bad_literals(node.right)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [b for e in node.elts for b in _bad_literals(e)]
    if isinstance(node, ast.IfExp):
        return _bad_literals(node.body) + _bad_literals(node.orelse)
    return []


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        shown = []
        if name in SHOWN_CALLS:
            shown += node.args[:1] if name in {"Page", "page_link"} else node.args
        shown += [k.value for k in node.keywords if k.arg in SHOWN_KEYWORDS]
        if name in {"Page", "page_link"}:
            shown = [k.value for k in node.keywords if k.arg in {"title", "label", "help"}]
        for arg in shown:
            for bad in _bad_literals(arg):
                text = ast.get_source_segment(path.read_text(), bad) or ""
                out.append(f"{path.relative_to(ROOT)}:{bad.lineno}: {text[:80]}")
    return out


def test_no_user_visible_literal_bypasses_the_translation_layer():
    bad = [v for p in UI_FILES for v in _violations(p)]
    assert not bad, f"{len(bad)} literal(s) shown without _():\n" + "\n".join(bad)


def test_the_lint_catches_what_it_should():
    def check(src: str) -> int:
        tree = ast.parse(src)
        return sum(len(_bad_literals(a)) for n in ast.walk(tree) if isinstance(n, ast.Call)
                   and getattr(n.func, "attr", "") in SHOWN_CALLS for a in n.args)

    assert check('st.caption("Accuracy of the model")') == 1
    assert check('st.caption(f"Accuracy {acc}")') == 1
    assert check('st.caption("Size: {mb}".format(mb=1))') == 1
    assert check('st.tabs(["Table", "Chart"])') == 2
    assert check('st.caption(_("Accuracy of the model"))') == 0
    assert check('st.caption(_("Size: {mb}").format(mb=1))') == 0
    assert check('st.caption(f"{a} · {b}")') == 0
    assert check('st.caption("MACs")') == 0


def test_a_string_in_several_catalog_files_has_one_translation():
    """The running app reads the files as one catalog: a msgid translated twice must read the same."""
    seen: dict[tuple, tuple[str, str]] = {}
    clashes = []
    for po in PO:
        with open(po, "rb") as f:
            for m in read_po(f, locale="ru"):
                if not m.id:
                    continue
                key = (m.context, m.id if isinstance(m.id, str) else tuple(m.id))
                text = m.string if isinstance(m.string, str) else tuple(m.string)
                if key in seen and seen[key][1] != text:
                    clashes.append(f"{key[1]!r}: {seen[key][0]} {seen[key][1]!r} ≠ {po.name} {text!r}")
                seen.setdefault(key, (po.name, text))
    assert not clashes, "\n".join(clashes)
