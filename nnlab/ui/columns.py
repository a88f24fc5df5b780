"""Table headers in the reader's language: a frame keeps its English column names (the keys code and tests use,
and what a CSV holds); ``st.dataframe``'s ``column_config`` shows each header through :func:`nnlab.i18n._`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nnlab.i18n import _


def labels(columns: Iterable[Any], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``column_config`` that labels every string column with its translation, keeping the given configs.

    ``config`` maps a column name to a column config (its label, when it has none, becomes the translated name)
    or to None (the column hidden), as ``st.dataframe`` takes it. A column's name should be marked with ``N_()``
    where it is written; names that are data (layer or class names) stay as they are, having no translation.
    """
    config = dict(config or {})
    out: dict[str, Any] = {}
    for c in columns:
        if not isinstance(c, str):
            continue
        if c not in config:
            out[c] = _(c)  # a string value is the column's label
            continue
        cfg = config.pop(c)
        out[c] = cfg if cfg is None else {**cfg, "label": cfg.get("label") or _(c)}
    out.update(config)
    return out
