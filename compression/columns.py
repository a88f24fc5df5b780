"""Shown names of the table columns that compression produces (compare, pareto, search's result_rows).

The tables keep their English column keys (pages, tests and the CSV download index them); a page shows a table
through :func:`shown` (or names one column with :func:`column_label`), which translates the keys to the current
language. Keys without a translation (layer names, record names) are shown as they are.
"""

from __future__ import annotations

from typing import Any

from nnlab.i18n import N_, _

SPEEDUP_SAME = "speed-up b1, same runtime (×)"
SPEEDUP_SAME_32 = "speed-up b32, same runtime (×)"
SPEEDUP_FASTEST = "speed-up b1 vs base's fastest fp32 (×)"
SPEEDUP_FASTEST_32 = "speed-up b32 vs base's fastest fp32 (×)"

COLUMN_LABELS: dict[str, str] = {k: k for k in (
    N_("name"), N_("accuracy"), N_("Δ accuracy (points)"), N_("drop (points)"), N_("size (KiB)"),
    N_("size ÷ ref"), N_("size ×smaller"), N_("gzip (KiB)"), N_("latency b1 (ms)"), N_("latency b32 (ms)"),
    N_("speed-up b1, same runtime (×)"), N_("speed-up b32, same runtime (×)"),
    N_("speed-up b1 vs base's fastest fp32 (×)"), N_("speed-up b32 vs base's fastest fp32 (×)"),
    N_("MACs (M)"), N_("MACs ÷ ref"), N_("params"), N_("nonzero params"), N_("sparsity"), N_("weight sparsity"),
    N_("runtime"), N_("base timed in"), N_("base's fastest fp32"), N_("latency comparable"), N_("format"),
    N_("method"), N_("id"), N_("agreement with ref"), N_("changed predictions"), N_("layer"), N_("bits"),
    N_("clusters"), N_("channels"), N_("frontier"), N_("comparable"), N_("candidate"), N_("test accuracy"),
    N_("changed"), N_("fixed"), N_("broken"), N_("status"), N_("cost"), N_("screen accuracy"), N_("record"),
)}


def column_label(key: Any) -> Any:
    """The column ``key`` in the current language: a known key translated, ``"sparsity · <record>"`` with its
    quantity translated, anything else (not a string, a layer or record name) unchanged."""
    if not isinstance(key, str):
        return key
    if key in COLUMN_LABELS:
        return _(key)
    head, sep, tail = key.partition(" · ")
    if sep and head in COLUMN_LABELS:
        return f"{_(head)} · {tail}"
    return key


def shown(table: Any) -> Any:
    """A copy of a DataFrame (or a list of row dicts) with its column keys in the current language."""
    if isinstance(table, list):
        return [{column_label(k): v for k, v in row.items()} for row in table]
    return table.rename(columns=column_label)
