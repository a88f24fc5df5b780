"""The Pareto frontier over result records (maximise accuracy, minimise a cost) and its Plotly figures.

A record is on the frontier when no other record is at least as accurate *and* at most as costly while
being strictly better in one of the two. Records whose accuracy or cost is unknown (NaN, or a size of 0
for a model held only in memory) are plotted nowhere and never on the frontier.

Latency is compared like with like: on a latency axis the base appears once per runtime it was timed in
(:func:`base_points`), every variant's speed-up is stated against the base in the variant's own runtime (and,
labelled as such, against the base's fastest fp32 runtime), and a record timed by an older harness
(:func:`nnlab.measure.comparable`) is left off the latency axes until it is measured again.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import plotly.graph_objects as go

from compression.columns import SPEEDUP_FASTEST, SPEEDUP_SAME, SPEEDUP_SAME_32
from compression.columns import column_label, shown  # noqa: F401 - the page shows tables through these
from nnlab import i18n
from nnlab.i18n import N_, _
from nnlab.measure import comparable, speedups
from nnlab.records import Record

# The costs and their axis titles (marked with N_: show them through cost_label, or _() where shown).
COSTS: dict[str, str] = {
    "size": N_("Size on disk (bytes)"),
    "size_gzip": N_("Size gzipped (bytes)"),
    "latency": N_("Latency, batch 1 (ms)"),
    "latency32": N_("Latency, batch 32 (ms)"),
    "macs": N_("MACs per image"),
}
# The figure's title per cost.
COST_TITLES: dict[str, str] = {
    "size": N_("Accuracy vs size on disk"),
    "size_gzip": N_("Accuracy vs size gzipped"),
    "latency": N_("Accuracy vs latency, batch 1"),
    "latency32": N_("Accuracy vs latency, batch 32"),
    "macs": N_("Accuracy vs macs per image"),
}


def cost_label(cost: str) -> str:
    """The cost's axis title in the current language (the key itself for an unknown cost)."""
    return _(COSTS[cost]) if cost in COSTS else cost


def cost_of(record: Record, cost: str = "size") -> float:
    """The record's cost on one axis (NaN when unknown)."""
    if cost == "size":
        v = float(record.size_bytes)
    elif cost == "size_gzip":
        v = float(record.size_gzip_bytes)
    elif cost == "latency":
        v = record.latency_ms(1)
    elif cost == "latency32":
        v = record.latency_ms(32)
    elif cost == "macs":
        v = float(record.macs)
    else:
        raise ValueError(_("unknown cost {cost!r}; one of {costs}").format(cost=cost, costs=', '.join(COSTS)))
    return v if v > 0 and math.isfinite(v) else float("nan")


def runtime_of(record: Record) -> str:
    """The runtime that executed the record's latency measurement ("openvino-int8-cpu" …; "unknown" if none)."""
    lat = (record.latency or {}).get("1") or {}
    return str(lat.get("runtime") or (record.extra or {}).get("runtime") or "unknown")


COLOR_BY = ("method", "runtime")
COLOR_BY_LABELS: dict[str, str] = {"method": N_("method"), "runtime": N_("runtime")}


def runtime_note(record: Record) -> str:
    """Where the record's latency comes from, and, when nnlab chose the runtime by measurement, every candidate.

    E.g. "runs in openvino-int8-cpu, 2 threads, 9.31 ms at batch 1 — chosen by measurement: openvino 9.3 ms,
    onnxruntime 10.4 ms (2 thread(s), batch 1, medians of 5 interleaved rounds)".
    """
    lat = (record.latency or {}).get("1") or {}
    text = _("runs in {runtime}").format(runtime=runtime_of(record))
    if lat:
        text += _(", {threads} thread(s), {ms:.3g} ms at batch 1").format(
            threads=lat.get("threads", "?"), ms=float(lat.get("median_ms", float("nan"))))
    extra = record.extra or {}
    choices = [extra.get("runtime_choice")] + [s.get("extra", {}).get("runtime_choice")
                                               for s in extra.get("steps", []) if isinstance(s, dict)]
    choice = next((c for c in reversed(choices) if isinstance(c, dict)), None)
    if choice:
        figs = sorted((f for f in choice.get("figures", []) if f.get("median_ms") is not None),
                      key=lambda f: f["median_ms"])
        shown = ", ".join(f"{f['name']} {f['median_ms']:.3g} ms" for f in figs)
        left = [f"{f['name']} {f['status']}" for f in choice.get("figures", []) if f.get("median_ms") is None]
        again = any(f.get("remeasured") for f in figs)
        text += (_(" — chosen by measurement: {figures}").format(figures=shown)
                 + (f"; {', '.join(left)}" if left else "")
                 + _(" ({threads} thread(s), batch {batch}, medians of {rounds} interleaved rounds").format(
                     threads=choice.get("threads"), batch=choice.get("batch"), rounds=choice.get("rounds"))
                 + (_("; the two fastest were close, so all were timed again over twice the rounds") if again else "")
                 + (_(", cached") if choice.get("cached") else "") + ")")
    if "latency_ratio" in extra and "macs_ratio" in extra:
        text += _("; pruned/unpruned in {runtime}: {macs:.2f}× MACs, {latency:.2f}× latency").format(
            runtime=extra.get("latency_runtime") or _("the same runtime"), macs=extra["macs_ratio"],
            latency=extra["latency_ratio"])
    return text


LATENCY_COSTS = ("latency", "latency32")


def base_points(base: Record) -> list[Record]:
    """The base once per runtime it was timed in (fp32), fastest first; the base itself when it has one."""
    lats = base.latencies or {}
    if len(lats) < 2:
        return [base]
    order = sorted(lats, key=lambda rt: float((lats[rt].get("1") or {}).get("median_ms", float("inf"))))
    return [dataclasses.replace(base, name=f"{base.name} · {rt}", latency=dict(lats[rt]),
                                extra={**base.extra, "base_runtime": rt}) for rt in order]


def stale(records: list[Record]) -> list[Record]:
    """Records whose latency is not comparable with today's harness (measured by an older one, or alone)."""
    return [r for r in records if r.latency and not comparable(r)]


def plotted(records: list[Record], cost: str, base_id: str | None = None) -> list[Record]:
    """The records to draw on one axis: on a latency axis the base once per runtime and no stale record."""
    if cost not in LATENCY_COSTS:
        return records
    out: list[Record] = []
    for r in records:
        if not comparable(r):
            continue
        out.extend(base_points(r) if r.id == base_id and not r.parent else [r])
    return out


def pareto_mask(accuracy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated points (maximise ``accuracy``, minimise ``cost``).

    Identical points are all kept; points with a NaN coordinate are never on the frontier.
    """
    acc = np.asarray(accuracy, dtype=float)
    c = np.asarray(cost, dtype=float)
    if acc.shape != c.shape:
        raise ValueError(_("accuracy and cost need the same length"))
    ok = np.isfinite(acc) & np.isfinite(c)
    mask = np.zeros(len(acc), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok.copy()
        others[i] = False
        dominated = others & (acc >= acc[i]) & (c <= c[i]) & ((acc > acc[i]) | (c < c[i]))
        mask[i] = not dominated.any()
    return mask


def frontier(records: list[Record], cost: str = "size") -> list[Record]:
    """The records on the frontier, cheapest first."""
    mask = pareto_mask(np.array([r.accuracy for r in records], float),
                       np.array([cost_of(r, cost) for r in records], float))
    on = [r for r, m in zip(records, mask) if m]
    return sorted(on, key=lambda r: (cost_of(r, cost), -r.accuracy))


def frontier_ids(records: list[Record], cost: str = "size") -> set[str]:
    return {r.id for r in frontier(records, cost)}


def summary_rows(records: list[Record], base: Record | None = None, cost: str = "size") -> list[dict]:
    """One row per record, the compared quantities first and the id last: accuracy, drop vs ``base``, size and
    how many times smaller, latency and both speed-ups (same runtime; vs the base's fastest fp32), MACs."""
    on = frontier_ids(records, cost)
    rows = []
    for r in records:
        sp1 = speedups(r, base if base is not None and r.parent == base.id else None, 1)
        sp32 = speedups(r, base if base is not None and r.parent == base.id else None, 32)
        row = {"name": r.name, "accuracy": r.accuracy}
        if base is not None:
            row["drop (points)"] = 100 * (base.accuracy - r.accuracy)
        row["size (KiB)"] = r.size_bytes / 1024 if r.size_bytes else float("nan")
        if base is not None:
            row["size ×smaller"] = (base.size_bytes / r.size_bytes if r.size_bytes and base.size_bytes
                                    else float("nan"))
        row.update({"latency b1 (ms)": r.latency_ms(1) if comparable(r) else float("nan"),
                    SPEEDUP_SAME: sp1["same_runtime"], SPEEDUP_FASTEST: sp1["vs_fastest_fp32"],
                    "latency b32 (ms)": r.latency_ms(32) if comparable(r) else float("nan"),
                    SPEEDUP_SAME_32: sp32["same_runtime"], "runtime": runtime_of(r),
                    "base timed in": sp1["same_runtime_base"], "MACs (M)": r.macs / 1e6, "sparsity": r.sparsity,
                    "frontier": r.id in on, "method": r.method, "comparable": comparable(r), "id": r.id})
        rows.append(row)
    return rows



def _hover(r: Record, base: Record | None = None) -> str:
    lat = r.latency_ms(1)
    num = i18n.num
    size = _("{size} KiB").format(size=num(r.size_bytes / 1024, ".1f")) if r.size_bytes else _("in memory")
    text = (f"<b>{r.name}</b><br>"
            + _("id {id}<br>method {method}<br>accuracy {accuracy}<br>size {size} (gzip {gzip} KiB)<br>latency b1 "
                "{latency} ms ({runtime})<br>MACs {macs} M<br>sparsity {sparsity}").format(
                id=r.id, method=r.method, accuracy=num(r.accuracy, ".2%"), size=size,
                gzip=num(r.size_gzip_bytes / 1024, ".1f"), latency=num(lat, ".3f"), runtime=runtime_of(r),
                macs=num(r.macs / 1e6, ".2f"), sparsity=num(r.sparsity, ".1%")))
    if r.parent:
        sp = speedups(r, base if base is not None and base.id == r.parent else None, 1)
        if math.isfinite(sp["same_runtime"]):
            text += "<br>" + _("speed-up {ratio}× vs the base in {runtime} (same run)").format(
                ratio=num(sp["same_runtime"], ".2f"), runtime=sp["same_runtime_base"])
        if math.isfinite(sp["vs_fastest_fp32"]):
            text += "<br>" + _("{ratio}× vs the base's fastest fp32 ({runtime})").format(
                ratio=num(sp["vs_fastest_fp32"], ".2f"), runtime=sp["fastest_fp32_runtime"])
        if not comparable(r):
            text += "<br>" + _("latency from an older harness: not compared")
    if isinstance(r.extra.get("restored_layers"), list):  # a repair: the layers it put back
        text += "<br>" + _("layers put back: {layers}").format(layers=", ".join(r.extra["restored_layers"]) or "—")
    return text


def bubble_sizes(macs: np.ndarray, smallest: float = 10.0, largest: float = 40.0) -> np.ndarray:
    """Marker diameters growing with the square root of MACs (so the area is proportional)."""
    m = np.sqrt(np.clip(np.asarray(macs, float), 0, None))
    if len(m) == 0 or not np.isfinite(m).any() or m.max() <= 0:
        return np.full(len(m), (smallest + largest) / 2)
    return smallest + (largest - smallest) * m / m.max()


def pareto_figure(records: list[Record], cost: str = "size", base_id: str | None = None,
                  log_x: bool | None = None, height: int = 480, color_by: str = "method") -> go.Figure:
    """Accuracy against ``cost``: one trace per method or per runtime (``color_by``), bubbles sized by MACs,
    the frontier drawn.

    Every marker carries its record id as ``customdata[0]`` (for selections). ``log_x`` defaults to True
    when the costs span more than a factor 10.
    """
    base = next((r for r in records if r.id == base_id), None)
    pts = [(r, cost_of(r, cost)) for r in plotted(records, cost, base_id)]
    pts = [(r, c) for r, c in pts if math.isfinite(c) and math.isfinite(r.accuracy)]
    fig = go.Figure()
    if not pts:
        fig.update_layout(title=_("No record has both an accuracy and this cost"), height=height,
                          separators=i18n.plotly_separators())
        return fig
    sizes = dict(zip([r.id for r, _ in pts], bubble_sizes(np.array([r.macs for r, _ in pts]))))
    if color_by not in COLOR_BY:
        raise ValueError(_("color_by must be one of {choices}").format(choices=', '.join(COLOR_BY)))
    group_of = runtime_of if color_by == "runtime" else (lambda r: r.method)
    for m in dict.fromkeys(group_of(r) for r, _cost in pts):
        group = [(r, c) for r, c in pts if group_of(r) == m]
        fig.add_trace(go.Scatter(
            x=[c for _, c in group], y=[r.accuracy for r, _ in group], name=m,
            mode="markers+text" if any("base_runtime" in r.extra for r, _ in group) else "markers",
            text=[_("base · {runtime}").format(runtime=r.extra["base_runtime"]) if "base_runtime" in r.extra else ""
                  for r, _c in group],
            textposition="top center",
            customdata=[[r.id] for r, _ in group], hovertext=[_hover(r, base) for r, _ in group],
            hovertemplate="%{hovertext}<extra></extra>",
            marker=dict(size=[sizes[r.id] for r, _ in group], opacity=0.75, line=dict(width=1, color="#333"),
                        symbol=["star" if r.id == base_id else "circle" for r, _ in group])))
    front = frontier([r for r, _ in pts], cost)
    fig.add_trace(go.Scatter(x=[cost_of(r, cost) for r in front], y=[r.accuracy for r in front],
                             mode="lines", line=dict(shape="hv", dash="dash", color="#444"), name=_("Pareto frontier"),
                             hoverinfo="skip"))
    xs = [c for _, c in pts]
    if log_x is None:
        log_x = max(xs) / min(xs) > 10
    axis = _(COSTS[cost])
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10),
                      legend_title_text=_(COLOR_BY_LABELS[color_by]),
                      xaxis_title=_("{axis} — log scale").format(axis=axis) if log_x else axis,
                      yaxis_title=_("test accuracy"), yaxis_tickformat=".1%", title=_(COST_TITLES[cost]),
                      separators=i18n.plotly_separators())
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def selected_ids(selection: object) -> list[str]:
    """Record ids from a Streamlit/Plotly selection state (``customdata[0]`` of each selected point)."""
    points = []
    if isinstance(selection, dict):
        points = (selection.get("selection") or selection).get("points", []) or []
    else:
        sel = getattr(selection, "selection", None)
        points = (getattr(sel, "points", None) if sel is not None else None) or []
    out = []
    for p in points:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if cd:
            v = cd[0] if isinstance(cd, (list, tuple)) else cd
            if isinstance(v, str) and v not in out:
                out.append(v)
    return out
