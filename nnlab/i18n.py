"""The one translation layer: standard gettext catalogs, English by default, Russian complete.

Every user-visible string goes through :func:`_` (or :func:`ngettext`); strings defined at import time (registry
descriptions, field help, verdict templates) are marked with :func:`N_` and translated where they are shown.

Catalogs are gettext ``.po`` sources in ``nnlab/locale/<lang>/LC_MESSAGES/*.po``: one file per part of the code
(``pages.po`` for app.py, nnlab/ui and the Overview/Train/Jobs/Diagnose pages, ``pages_inside_compress.po``,
``diagnostics.po``, ``compression.po``, ``nnlab.po``), so each part owns its file; at run time they form one
catalog (a chain of gettext translations). They are compiled in memory with Babel the first time a language is used (and again when a source changes):
there is no compiled ``.mo`` to forget. ``python -m nnlab.i18n`` lists marked strings that lack a translation.

The language is per session: the router sets it at the start of every script run (``?lang=ru`` or the sidebar
switch); a job thread runs in the language of the session that started it. Numbers follow the language where they
are read (:func:`num`: a decimal comma in Russian), never inside values a user copies (ids, paths, JSON).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gettext
import io
import os
from collections.abc import Iterator
from pathlib import Path

LANGUAGES: dict[str, str] = {"en": "English", "ru": "Русский"}
DEFAULT = "en"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"

_language: contextvars.ContextVar[str | None] = contextvars.ContextVar("nnlab_language", default=None)
# Where a thread has no language of its own (a Streamlit fragment's rerun runs in a fresh thread without the
# router), the UI glue may say where the session keeps it: nnlab/ui/session.py registers a reader of
# st.session_state here (this module never imports Streamlit).
_fallback: list = []


def set_fallback(reader) -> None:  # noqa: ANN001 - a callable returning a language code or None
    """Register ``reader()`` as the language of a thread that set none (the UI's session state)."""
    _fallback[:] = [reader]


def normalize(lang: str | None) -> str:
    """A supported language code from ``lang`` ("ru", "ru_RU.UTF-8", "RU" → "ru"); the default otherwise."""
    code = (lang or "").strip().lower().replace("-", "_").split(".")[0].split("_")[0]
    return code if code in LANGUAGES else DEFAULT


def language_from_env(environ: dict[str, str] | None = None) -> str:
    """The CLI's language from ``NNLAB_LANG``, ``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES`` or ``LANG`` (first set)."""
    env = os.environ if environ is None else environ
    for key in ("NNLAB_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        if env.get(key):
            return normalize(env[key].split(":")[0])
    return DEFAULT


def get_language() -> str:
    lang = _language.get()
    if lang is None and _fallback:
        try:
            lang = _fallback[0]()
        except Exception:  # noqa: BLE001 - outside a session (a job thread, the CLI) there is no session language
            lang = None
    return normalize(lang) if lang else DEFAULT


def set_language(lang: str | None) -> str:
    """Set this thread's (context's) language; returns the normalized code."""
    code = normalize(lang)
    _language.set(code)
    return code


@contextlib.contextmanager
def language(lang: str | None) -> Iterator[str]:
    """``with language("ru"): ...`` — temporarily another language (the report, a job thread)."""
    token = _language.set(normalize(lang))
    try:
        yield get_language()
    finally:
        _language.reset(token)


def _sources(lang: str) -> tuple[tuple[str, float], ...]:
    folder = LOCALE_DIR / lang / "LC_MESSAGES"
    return tuple((str(p), p.stat().st_mtime) for p in sorted(folder.glob("*.po"))) if folder.is_dir() else ()


@functools.lru_cache(maxsize=8)  # bound: languages × source versions seen in one process
def _compiled(lang: str, sources: tuple[tuple[str, float], ...]) -> gettext.NullTranslations:
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    chain: gettext.NullTranslations | None = None
    for path, _mtime in sources:
        with open(path, "rb") as f:
            catalog = read_po(f, locale=lang)
        buf = io.BytesIO()
        write_mo(buf, catalog, use_fuzzy=False)
        buf.seek(0)
        domain = gettext.GNUTranslations(buf)
        if chain is None:
            chain = domain
        else:
            chain.add_fallback(domain)
    return chain or gettext.NullTranslations()


def translations(lang: str | None = None) -> gettext.NullTranslations:
    code = normalize(lang or get_language())
    if code == DEFAULT:
        return gettext.NullTranslations()
    return _compiled(code, _sources(code))


def _(message: str) -> str:
    """``message`` in the current language (the English msgid where no translation exists)."""
    return translations().gettext(message) if message else message


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations().ngettext(singular, plural, n)


def pgettext(context: str, message: str) -> str:
    """A translation that depends on context ("Load" the verb on a button vs. "load" a noun)."""
    return translations().pgettext(context, message)


def N_(message: str) -> str:
    """Mark ``message`` for the catalog without translating it now (module-level constants); show it with ``_()``."""
    return message


def decimal_separator(lang: str | None = None) -> str:
    return "," if normalize(lang or get_language()) == "ru" else "."


def num(value: float | int | None, spec: str = ".2f", lang: str | None = None) -> str:
    """``value`` formatted with ``spec`` for reading: "3,28" in Russian, "3.28" in English; "—" for None/NaN.

    Never use it for values the user copies (ids, paths, JSON): those keep Python's own formatting."""
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    text = format(value, spec)
    if normalize(lang or get_language()) == "ru":
        text = text.replace(",", "\u202f").replace(".", ",")  # thousands: narrow no-break space; decimal comma
    return text


def plotly_separators(lang: str | None = None) -> str:
    """Plotly's ``layout.separators`` (decimal, then thousands) for the language."""
    return ", " if normalize(lang or get_language()) == "ru" else ".,"


def translated_ids(lang: str = "ru") -> set[str]:
    """Every msgid with a complete, non-fuzzy translation in any of ``lang``'s catalog files (contexts as
    ``ctx\\x04id``): the union the running code sees."""
    from babel.messages.pofile import read_po

    done: set[str] = set()
    for path in sorted((LOCALE_DIR / lang / "LC_MESSAGES").glob("*.po")):
        with open(path, "rb") as f:
            for m in read_po(f, locale=lang):
                if not m.id or m.fuzzy:
                    continue
                strings = m.string if isinstance(m.string, (tuple, list)) else (m.string,)
                if all(strings):
                    key = m.id[0] if isinstance(m.id, (tuple, list)) else m.id
                    done.add(key if m.context is None else f"{m.context}\x04{key}")
    return done


def missing(lang: str = "ru") -> dict[str, list[str]]:
    """Per part of the code: marked strings with no (or only a fuzzy/empty) translation in ``lang``'s catalogs."""
    done = translated_ids(lang)
    return {part: sorted(i for i in ids if i not in done) for part, ids in extract().items()}


ROOT = Path(__file__).resolve().parents[1]
# The parts of the code whose marked strings the catalogs must cover (paths relative to the repository root).
DOMAIN_SOURCES: dict[str, tuple[str, ...]] = {
    "pages": ("app.py", "pages", "nnlab/ui"),
    "diagnostics": ("diagnostics",),
    "compression": ("compression",),
    "nnlab": ("nnlab",),
}
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2), "pgettext": ((1, "c"), 2)}


def _files(domain: str) -> Iterator[Path]:
    for rel in DOMAIN_SOURCES[domain]:
        p = ROOT / rel
        files = [p] if p.is_file() else sorted(p.rglob("*.py"))
        for f in files:
            if domain == "nnlab" and f.is_relative_to(ROOT / "nnlab" / "ui"):
                continue  # nnlab/ui belongs to the pages domain
            yield f


def extract() -> dict[str, set[str]]:
    """Per domain, every msgid the code marks (Babel's Python extractor; contexts as ``ctx\\x04id``)."""
    from babel.messages.extract import extract_python

    out: dict[str, set[str]] = {}
    for domain in DOMAIN_SOURCES:
        ids: set[str] = set()
        for path in _files(domain):
            with open(path, "rb") as f:
                for _lineno, func, message, _comments in extract_python(f, KEYWORDS, [], {}):
                    if func == "pgettext" and isinstance(message, tuple):
                        ctx, msg = message[0], message[1]
                        if ctx and msg:
                            ids.add(f"{ctx}\x04{msg}")
                        continue
                    msg = message[0] if isinstance(message, tuple) else message
                    if msg:
                        ids.add(msg)
        out[domain] = ids
    return out


def _po_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


if __name__ == "__main__":  # python -m nnlab.i18n [lang]: the untranslated strings, as .po entries to fill in
    import sys

    lang = sys.argv[1] if len(sys.argv) > 1 else "ru"
    for dom, ids in missing(lang).items():
        if ids:
            print(f"# {dom}.po: {len(ids)} untranslated")
            for i in ids:
                if "\x04" in i:
                    ctx, i = i.split("\x04", 1)
                    print(f"msgctxt {_po_quote(ctx)}")
                print(f"msgid {_po_quote(i)}\nmsgstr \"\"\n")
