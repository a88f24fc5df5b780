"""Error analysis over one evaluation pass: per-class metrics, the confusion matrix, the most confused
pairs, and the worst errors ranked, filtered and paged.

Everything here is numpy over the arrays of an :class:`nnlab.evaluate.EvalResult`; nothing re-runs the
model. Rankings are computed once (``argsort``) and paging is slicing, so thousands of samples page
without slowdown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from nnlab import i18n
from nnlab.i18n import N_, _, num

SORTS = {  # shown through _() where they are shown
    "loss": N_("highest loss first"),
    "confidence": N_("most confident wrong predictions first"),
    "margin": N_("smallest margin (true-class probability minus the best other class) first"),
}


# The columns of :meth:`ClassMetrics.rows` for the reader (keys stay as they are; pages rename with _()).
METRIC_COLUMNS = {"class": N_("class"), "precision": N_("precision"), "recall": N_("recall"), "f1": N_("f1"),
                  "support": N_("support")}


@dataclass(frozen=True)
class ClassMetrics:
    """Per-class precision, recall, F1 and support (as scikit-learn defines them, zero_division=0)."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    def macro(self) -> dict[str, float]:
        """Unweighted means over the classes."""
        return {"precision": float(self.precision.mean()), "recall": float(self.recall.mean()),
                "f1": float(self.f1.mean())}

    def rows(self, classes: list[str]) -> list[dict]:
        """One dict per class, for a table."""
        return [{"class": c, "precision": float(self.precision[i]), "recall": float(self.recall[i]),
                 "f1": float(self.f1[i]), "support": int(self.support[i])} for i, c in enumerate(classes)]


@dataclass(frozen=True)
class ConfusedPair:
    """A (true, predicted) class pair and how often the model confuses them."""

    true: int
    pred: int
    count: int
    rate: float  # count over the support of the true class


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix ``C[true, pred]`` of counts (int64)."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat[: num_classes * num_classes].reshape(num_classes, num_classes)


def row_normalize(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (rows with no samples stay 0)."""
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)


def class_metrics(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> ClassMetrics:
    """Per-class precision, recall, F1 and support from the confusion matrix."""
    cm = confusion(labels, preds, num_classes).astype(np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return ClassMetrics(precision, recall, f1, support.astype(np.int64))


def confused_pairs(cm: np.ndarray, top: int | None = None) -> list[ConfusedPair]:
    """Off-diagonal cells of ``cm`` with at least one sample, most frequent first (ties: higher rate)."""
    k = cm.shape[0]
    support = cm.sum(axis=1)
    pairs = [ConfusedPair(t, p, int(cm[t, p]), float(cm[t, p] / support[t]))
             for t in range(k) for p in range(k) if t != p and cm[t, p] > 0]
    pairs.sort(key=lambda q: (-q.count, -q.rate, q.true, q.pred))
    return pairs[:top] if top is not None else pairs


def cell_indices(labels: np.ndarray, preds: np.ndarray, true: int, pred: int) -> np.ndarray:
    """Indices of the samples in confusion-matrix cell ``(true, pred)``."""
    return np.flatnonzero((np.asarray(labels) == true) & (np.asarray(preds) == pred))


def margins(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Probability of the true class minus the highest probability of any other class (negative: wrong)."""
    rows = np.arange(len(labels))
    p_true = probs[rows, labels]
    other = probs.copy()
    other[rows, labels] = -np.inf
    return p_true - other.max(axis=1)


def ranking_scores(probs: np.ndarray, losses: np.ndarray, labels: np.ndarray, by: str) -> np.ndarray:
    """A score per sample where larger means worse, for ``by`` in :data:`SORTS`."""
    if by == "loss":
        return np.asarray(losses, dtype=np.float64)
    if by == "confidence":
        conf = probs.max(axis=1).astype(np.float64)
        wrong = probs.argmax(axis=1) != labels
        return np.where(wrong, conf, conf - 2.0)  # every wrong prediction ranks above every right one
    if by == "margin":
        return -margins(probs, labels).astype(np.float64)
    raise ValueError(_("unknown sort {by}; choose one of {choices}").format(by=repr(by), choices=", ".join(SORTS)))


def rank_samples(probs: np.ndarray, losses: np.ndarray, labels: np.ndarray, by: str = "loss",
                 true_class: int | None = None, pred_class: int | None = None,
                 only_wrong: bool = True) -> np.ndarray:
    """Indices of the samples, worst first by ``by``, filtered by true and predicted class.

    Args:
        probs: ``N×K`` probabilities.
        losses: ``N`` per-sample losses.
        labels: ``N`` true classes.
        by: One of :data:`SORTS`.
        true_class: Keep only samples of this true class.
        pred_class: Keep only samples predicted as this class.
        only_wrong: Keep only misclassified samples.

    Returns:
        Sample indices (int64), worst first; ties broken by index so the order is stable.
    """
    labels = np.asarray(labels)
    preds = probs.argmax(axis=1)
    keep = np.ones(len(labels), dtype=bool)
    if only_wrong:
        keep &= preds != labels
    if true_class is not None:
        keep &= labels == true_class
    if pred_class is not None:
        keep &= preds == pred_class
    idx = np.flatnonzero(keep)
    scores = ranking_scores(probs[idx], losses[idx], labels[idx], by)
    return idx[np.argsort(-scores, kind="stable")]


def page_of(order: np.ndarray, page: int, per_page: int) -> np.ndarray:
    """Slice ``page`` (0-based, clipped to the last page) of ``per_page`` items from ``order``."""
    pages = num_pages(len(order), per_page)
    page = min(max(0, page), pages - 1)
    return order[page * per_page:(page + 1) * per_page]


def num_pages(n: int, per_page: int) -> int:
    """Pages needed for ``n`` items (at least 1)."""
    return max(1, (n + per_page - 1) // max(1, per_page))


def top_k(probs_row: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Classes and probabilities of the ``k`` most probable classes of one sample, most probable first."""
    k = min(k, len(probs_row))
    idx = np.argsort(-probs_row, kind="stable")[:k]
    return idx, probs_row[idx]


@dataclass(frozen=True)
class ErrorAnalysis:
    """Everything the Errors-by-class and Worst-errors pages show, computed once from one pass."""

    metrics: ClassMetrics
    confusion: np.ndarray
    pairs: list[ConfusedPair]
    orders: dict[str, np.ndarray]  # by sort key: misclassified indices, worst first
    error: float


def analyze(probs: np.ndarray, losses: np.ndarray, labels: np.ndarray, num_classes: int) -> ErrorAnalysis:
    """The full error analysis of one evaluation pass."""
    preds = probs.argmax(axis=1)
    cm = confusion(labels, preds, num_classes)
    return ErrorAnalysis(metrics=class_metrics(labels, preds, num_classes), confusion=cm, pairs=confused_pairs(cm),
                         orders={by: rank_samples(probs, losses, labels, by) for by in SORTS},
                         error=float((preds != labels).mean()) if len(labels) else float("nan"))


def confusion_figure(cm: np.ndarray, classes: list[str], normalized: bool = False) -> go.Figure:
    """Heatmap of the confusion matrix (rows true, columns predicted), counts or row-normalised."""
    z = row_normalize(cm) if normalized else cm
    text = [[num(v, ".0%") if normalized else f"{int(v)}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(classes), y=list(classes), text=text, texttemplate="%{text}", colorscale="Blues",
        customdata=cm, hovertemplate=_("true %{y}<br>predicted %{x}<br>%{customdata} samples") + "<extra></extra>"))
    fig.update_layout(xaxis_title=_("predicted"), yaxis_title=_("true"), yaxis_autorange="reversed",
                      height=120 + 36 * len(classes), margin=dict(l=10, r=10, t=30, b=10),
                      separators=i18n.plotly_separators())
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def topk_figure(classes: list[str], probs_row: np.ndarray, true: int, k: int = 5) -> go.Figure:
    """Horizontal bar chart of the top-``k`` probabilities; the true class in green, others grey."""
    idx, p = top_k(probs_row, k)
    colors = ["#2ca02c" if i == true else ("#d62728" if j == 0 else "#999999") for j, i in enumerate(idx)]
    fig = go.Figure(go.Bar(x=p[::-1], y=[classes[i] for i in idx][::-1], orientation="h",
                           marker_color=colors[::-1], text=[num(v, ".2f") for v in p[::-1]], textposition="auto"))
    fig.update_layout(height=150, margin=dict(l=0, r=0, t=0, b=0), xaxis_range=[0, 1], showlegend=False,
                      separators=i18n.plotly_separators())
    fig.update_yaxes(type="category")
    return fig
