"""Two or more models side by side: metrics with deltas, per-layer details, per-class and confusion
differences, agreement and the samples whose prediction changed.

Everything works on :class:`nnlab.records.Record` and :class:`nnlab.evaluate.EvalResult` (one pass of each
model over the same split), so a page computes the passes once and reads every table from them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from compression.columns import SPEEDUP_FASTEST, SPEEDUP_FASTEST_32, SPEEDUP_SAME, SPEEDUP_SAME_32
from compression.columns import column_label, shown  # noqa: F401 - the page shows tables through these
from nnlab import i18n
from nnlab.data.sets import ImageDataset
from nnlab.evaluate import EvalResult, evaluate, result_from_logits
from nnlab.i18n import _
from nnlab.measure import comparable, speedups
from nnlab.records import Record

LAYER_KEYS = ("sparsity", "weight_sparsity", "bits", "clusters", "channels", "params", "nonzero")


def _check_same(a: EvalResult, b: EvalResult) -> None:
    if len(a.labels) != len(b.labels) or not np.array_equal(a.labels, b.labels):
        raise ValueError(_("the two evaluations are not over the same samples"))


def metrics_table(records: list[Record], base: Record | None = None) -> pd.DataFrame:
    """One row per record (the first is the reference), the compared quantities first and ids last.

    The column keys stay English (a page shows them through :func:`compression.columns.shown`).

    Columns: name, accuracy and Δ accuracy (points) against the first; size, gzip size and size ÷ ref;
    latency b1/b32 with both speed-ups against the base model (``base``, default: the first record when it
    is a base): in the record's own runtime (the two timed in one run) and against the base's fastest fp32
    runtime (labelled); then MACs and ratio, parameters, sparsity, runtime, format, method and id.
    """
    if not records:
        return pd.DataFrame()
    ref = records[0]
    base = base if base is not None else (ref if not ref.parent else None)
    rows = []
    for r in records:
        parent = base if base is not None and r.parent == base.id else None
        sp1, sp32 = speedups(r, parent, 1), speedups(r, parent, 32)
        ok = comparable(r)
        rows.append({
            "name": r.name, "accuracy": r.accuracy, "Δ accuracy (points)": 100 * (r.accuracy - ref.accuracy),
            "size (KiB)": r.size_bytes / 1024, "size ÷ ref": _ratio(r.size_bytes, ref.size_bytes),
            "gzip (KiB)": r.size_gzip_bytes / 1024,
            "latency b1 (ms)": r.latency_ms(1) if ok else np.nan,
            SPEEDUP_SAME: sp1["same_runtime"], SPEEDUP_FASTEST: sp1["vs_fastest_fp32"],
            "latency b32 (ms)": r.latency_ms(32) if ok else np.nan,
            SPEEDUP_SAME_32: sp32["same_runtime"], SPEEDUP_FASTEST_32: sp32["vs_fastest_fp32"],
            "MACs (M)": r.macs / 1e6, "MACs ÷ ref": _ratio(r.macs, ref.macs), "params": r.params,
            "nonzero params": r.nonzero_params, "sparsity": r.sparsity, "weight sparsity": weight_sparsity(r),
            "runtime": (r.latency.get("1") or {}).get("runtime", ""), "base timed in": sp1["same_runtime_base"],
            "base's fastest fp32": sp1["fastest_fp32_runtime"], "latency comparable": ok,
            "format": r.artifact_format, "method": r.method, "id": r.id})
    return pd.DataFrame(rows)


def weight_sparsity(record: Record) -> float:
    """Fraction of zero weights over the Conv/Linear layers of a record (biases and norms excluded).

    Uses each layer's ``weight_sparsity`` when the method reported it, else the layer's overall sparsity;
    NaN when the record has no per-layer shapes.
    """
    zeros = total = 0.0
    for row in record.layers:
        if row.get("type") not in _WEIGHTED_TYPES or "shape" not in row:
            continue
        n = float(np.prod(row["shape"]))
        s = row.get("weight_sparsity", row.get("sparsity", 0.0))
        zeros, total = zeros + n * float(s), total + n
    return zeros / total if total else float("nan")


_WEIGHTED_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b and np.isfinite(b) and np.isfinite(a) and a else float("nan")


def layer_details(records: list[Record]) -> pd.DataFrame:
    """Per layer (rows) the sparsity, bit-width, clusters, channels of each record (columns ``key · name``)."""
    names: list[str] = []
    per: list[dict[str, dict]] = []
    for r in records:
        d = {row["name"]: row for row in r.layers if "name" in row}
        per.append(d)
        names.extend(n for n in d if n not in names)
    rows = []
    for n in names:
        row: dict = {"layer": n}
        for r, d in zip(records, per):
            layer = d.get(n, {})
            for k in ("sparsity", "bits", "clusters", "channels", "params"):
                if k in layer or k == "sparsity":
                    row[f"{k} · {r.name}"] = layer.get(k, np.nan)
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.dropna(axis=1, how="all") if len(df) else df


def agreement(a: EvalResult, b: EvalResult) -> float:
    """Fraction of samples with the same predicted class."""
    _check_same(a, b)
    return float((a.preds == b.preds).mean()) if len(a.preds) else float("nan")


def changed_indices(a: EvalResult, b: EvalResult) -> np.ndarray:
    """Indices (into the split) of samples whose predicted class differs between ``a`` and ``b``."""
    _check_same(a, b)
    return np.flatnonzero(a.preds != b.preds)


def change_breakdown(a: EvalResult, b: EvalResult) -> dict[str, int]:
    """Changed predictions split into fixed (wrong → right), broken (right → wrong) and other (wrong → wrong)."""
    idx = changed_indices(a, b)
    ra = a.preds[idx] == a.labels[idx]
    rb = b.preds[idx] == b.labels[idx]
    return {"changed": int(len(idx)), "fixed": int((~ra & rb).sum()), "broken": int((ra & ~rb).sum()),
            "wrong→wrong": int((~ra & ~rb).sum())}


def per_class_difference(a: EvalResult, b: EvalResult, num_classes: int) -> np.ndarray:
    """Per-class accuracy of ``b`` minus that of ``a`` (NaN for a class absent from the split)."""
    _check_same(a, b)
    return np.array(b.per_class_accuracy(num_classes)) - np.array(a.per_class_accuracy(num_classes))


def confusion(ev: EvalResult, num_classes: int) -> np.ndarray:
    """Confusion counts: rows are true classes, columns predictions (scikit-learn)."""
    return confusion_matrix(ev.labels, ev.preds, labels=list(range(num_classes)))


def confusion_difference(a: EvalResult, b: EvalResult, num_classes: int) -> np.ndarray:
    """``confusion(b) − confusion(a)`` (integers; each row sums to zero)."""
    _check_same(a, b)
    return confusion(b, num_classes) - confusion(a, num_classes)


def changed_samples(a: EvalResult, b: EvalResult, limit: int | None = None) -> list[dict]:
    """For each changed sample: index, label, both predictions and both confidences (max probability).

    Ordered with the broken ones (right → wrong) first, then by the confidence of ``b``, highest first.
    """
    idx = changed_indices(a, b)
    items = []
    for i in idx:
        items.append({"index": int(i), "label": int(a.labels[i]), "pred_a": int(a.preds[i]),
                      "conf_a": float(a.probs[i, a.preds[i]]), "pred_b": int(b.preds[i]),
                      "conf_b": float(b.probs[i, b.preds[i]]),
                      "broken": bool(a.preds[i] == a.labels[i] and b.preds[i] != b.labels[i])})
    items.sort(key=lambda d: (not d["broken"], -d["conf_b"]))
    return items[:limit] if limit is not None else items


def comparison_table(records: list[Record], evals: list[EvalResult] | None = None,
                     base: Record | None = None) -> pd.DataFrame:
    """The metrics table plus, when evaluations are given, agreement and changed count against the first
    (placed after Δ accuracy)."""
    df = metrics_table(records, base)
    if evals is not None and len(evals) == len(records) and len(records):
        df.insert(3, "agreement with ref", [agreement(evals[0], e) for e in evals])
        df.insert(4, "changed predictions", [int(len(changed_indices(evals[0], e))) for e in evals])
    return df


def comparison_csv(records: list[Record], evals: list[EvalResult] | None = None,
                   base: Record | None = None) -> str:
    """The comparison table as CSV text."""
    return comparison_table(records, evals, base).to_csv(index=False)


def evaluate_model(model: nn.Module, data: ImageDataset, split: str = "test") -> EvalResult:
    """One evaluation pass (a runtime-backed variant goes through its runner: its own predictions)."""
    from compression.variant import runner_logits

    runner = getattr(model, "runner", None)
    if runner is not None and hasattr(runner, "predict_logits"):
        return result_from_logits(runner_logits(runner, data, split), data.labels(split).numpy())
    return evaluate(model, data, split)


# --- figures ---------------------------------------------------------------------------------------------

def per_class_figure(diffs: dict[str, np.ndarray], classes: list[str], ref_name: str) -> go.Figure:
    """Grouped bars: per-class accuracy change (points) of each model against the reference."""
    fig = go.Figure()
    for name, d in diffs.items():
        fig.add_trace(go.Bar(x=classes, y=100 * np.asarray(d), name=name))
    fig.update_layout(barmode="group", height=340, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis_title=_("Δ accuracy vs {name} (points)").format(name=ref_name),
                      title=_("Per-class accuracy change"), separators=i18n.plotly_separators())
    return fig


def confusion_difference_figure(diff: np.ndarray, classes: list[str], title: str) -> go.Figure:
    """Heat map of a confusion difference, symmetric colour scale centred on zero."""
    m = float(np.abs(diff).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=diff, x=classes, y=classes, colorscale="RdBu", zmin=-m, zmax=m, zmid=0,
                               text=diff, texttemplate="%{text}",
                               hovertemplate=_("true %{y}<br>pred %{x}<br>Δ %{z}") + "<extra></extra>"))
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=40, b=10), title=title,
                      xaxis_title=_("predicted"), yaxis_title=_("true"), yaxis_autorange="reversed",
                      separators=i18n.plotly_separators())
    return fig


def weight_values(model: nn.Module, layer: str) -> np.ndarray:
    """The weight of ``layer`` as a flat float array (empty when the layer has none)."""
    mod = dict(model.named_modules()).get(layer)
    w = getattr(mod, "weight", None) if mod is not None else None
    if not isinstance(w, torch.Tensor):
        return np.zeros(0, np.float32)
    return w.detach().float().cpu().flatten().numpy()


def histogram_figure(values: dict[str, np.ndarray], title: str, bins: int = 60, log_y: bool = False) -> go.Figure:
    """Overlaid histograms (same bins) of several models' values."""
    fig = go.Figure()
    finite = [v[np.isfinite(v)] for v in values.values() if len(v)]
    if finite:
        lo = min(float(v.min()) for v in finite if len(v))
        hi = max(float(v.max()) for v in finite if len(v))
        hi = hi if hi > lo else lo + 1e-6
        edges = np.linspace(lo, hi, bins + 1)
        for name, v in values.items():
            counts, _ = np.histogram(v[np.isfinite(v)], bins=edges)
            fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, name=name, opacity=0.6,
                                 width=(edges[1] - edges[0])))
    fig.update_layout(barmode="overlay", height=320, margin=dict(l=10, r=10, t=40, b=10), title=title,
                      yaxis_type="log" if log_y else "linear", separators=i18n.plotly_separators())
    return fig


def binned_figure(hists: dict[str, tuple[np.ndarray, np.ndarray]], title: str, log_y: bool = False) -> go.Figure:
    """Overlaid histograms already binned (``name → (counts, edges)``; each model may have its own edges)."""
    fig = go.Figure()
    for name, (counts, edges) in hists.items():
        edges = np.asarray(edges, float)
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=np.asarray(counts), name=name, opacity=0.6,
                             width=np.diff(edges)))
    fig.update_layout(barmode="overlay", height=320, margin=dict(l=10, r=10, t=40, b=10), title=title,
                      yaxis_type="log" if log_y else "linear", separators=i18n.plotly_separators())
    return fig


def runs_outside_pytorch(model: nn.Module) -> bool:
    """True for a variant executed by another runtime (int8 ONNX Runtime): no PyTorch weights or hooks."""
    return getattr(model, "runner", None) is not None


def weighted_layers(model: nn.Module) -> list[str]:
    """Names of the Conv/Linear layers (those with a weight histogram)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
