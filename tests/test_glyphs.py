"""No emoji or pictographs in the UI: a system without an emoji font (Debian's chromium with only its default
fonts, DejaVu and Liberation) draws them as empty boxes. Icons go through Streamlit's Material icons
(":material/name:"), which Streamlit serves itself; marks are plain words.

The static scan covers every source file of the app (pages/, nnlab/, diagnostics/, compression/, app.py),
docstrings included: their text reaches the UI through help texts, captions and descriptions.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "app.py", *sorted(p for d in ("pages", "nnlab", "diagnostics", "compression")
                                    for p in (ROOT / d).rglob("*.py"))]

# Code points that need an emoji or symbol font Debian's chromium does not have by default.
FORBIDDEN_RANGES = [
    (0x2190, 0x21FF, "arrows beyond the four basic ones (Liberation has only those)"),
    (0x2300, 0x23FF, "miscellaneous technical (emoji such as watch, hourglass, play buttons)"),
    (0x2460, 0x24FF, "enclosed alphanumerics"),
    (0x25A0, 0x25FF, "geometric shapes"),
    (0x2600, 0x26FF, "miscellaneous symbols (sun, star, warning sign, check boxes)"),
    (0x2700, 0x27BF, "dingbats (check marks, crosses, arrows, scissors)"),
    (0x2B00, 0x2BFF, "miscellaneous symbols and arrows (heavy arrows, stars)"),
    (0x1F000, 0x1FAFF, "emoji and pictographs (faces, objects, symbols, transport, supplemental)"),
    (0xFE00, 0xFE0F, "variation selectors (emoji presentation)"),
    (0x200D, 0x200D, "zero-width joiner (emoji sequences)"),
    (0x20E3, 0x20E3, "combining enclosing keycap"),
    (0xE000, 0xF8FF, "private use area (icon fonts)"),
]
# Allowed inside the ranges above: the arrows Liberation Sans and DejaVu Sans both draw, and the ceiling brackets
# of a formula in a docstring (DejaVu draws them).
ALLOWED = {"\u2190", "\u2191", "\u2192", "\u2193", "\u2308", "\u2309"}


def forbidden(text: str) -> list[str]:
    """The characters of ``text`` that need an emoji or symbol font (as "U+XXXX NAME")."""
    bad = []
    for ch in dict.fromkeys(text):
        cp = ord(ch)
        if ch not in ALLOWED and any(lo <= cp <= hi for lo, hi, _ in FORBIDDEN_RANGES):
            bad.append(f"U+{cp:04X} {unicodedata.name(ch, '?')}")
    return bad


def test_the_rules_catch_the_marks_the_issue_names():
    for mark in ("\u2717", "\u2705", "\u274c", "\U0001f50d", "\u26a0\ufe0f", "\U0001f512", "\u2715", "\u2605",
                 "\u2b50", "\u2714", "\u27a1"):
        assert forbidden(f"x {mark} y"), mark
    assert forbidden("\u2195") and not forbidden("a → b · c ≤ d × e − f ± 1 α β Δ σ χ² ∞ …")


def test_no_source_file_writes_emoji_or_pictographs():
    found = []
    for path in SOURCES:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            bad = forbidden(line)
            if bad:
                found.append(f"{path.relative_to(ROOT)}:{n}: {', '.join(bad)}")
    assert not found, "use ':material/...:' icons or plain words:\n" + "\n".join(found)


def test_every_non_ascii_character_in_the_ui_has_a_glyph_in_debians_default_fonts():
    """fontconfig as referee: each non-ASCII character of pages/ is drawn by DejaVu Sans or Liberation Sans."""
    if shutil.which("fc-list") is None:
        pytest.fail("fc-list (fontconfig, installed with Debian's chromium) is missing", pytrace=False)
    chars = {ch for p in SOURCES if p.parent.name == "pages" or p.name == "app.py"
             for ch in p.read_text(encoding="utf-8") if ord(ch) > 127}
    missing = []
    for ch in sorted(chars):
        out = subprocess.run(["fc-list", f":charset={ord(ch):x}", "family"], capture_output=True, text=True,
                             check=True).stdout
        if not re.search(r"DejaVu Sans|Liberation Sans", out):
            missing.append(f"U+{ord(ch):04X} {unicodedata.name(ch, '?')}")
    assert not missing, missing
