"""Helpers of the Russian-interface tests (issue 24): a msgid's Russian text and the share of Cyrillic letters."""

from __future__ import annotations

import re

from nnlab import i18n

CYRILLIC = re.compile(r"[А-Яа-яЁё]")
LETTER = re.compile(r"[^\W\d_]")


def ru(msgid: str) -> str:
    """``msgid`` as the Russian catalog translates it."""
    with i18n.language("ru"):
        return i18n._(msgid)


def cyrillic_share(text: str, empty: float) -> float:
    """Cyrillic letters among all letters of ``text``; ``empty`` for a text without letters."""
    letters = LETTER.findall(text)
    return sum(1 for ch in letters if CYRILLIC.match(ch)) / len(letters) if letters else empty
