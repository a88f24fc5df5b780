"""Learning curves by training-set size: the lecture's "train on a subset of smaller size".

The architecture is retrained from scratch on nested, stratified subsets (10/25/50/100 % by default);
each point gives E_train (on the subset it trained on) and E_test (on the test split). Results are cached
in the workspace under a key made of model, dataset, fractions and epochs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from torch import nn

from nnlab.data.sets import ImageDataset
from nnlab.models.randinit import seeded_init
from nnlab.train import Progress, TrainConfig, train_model
from nnlab.workspace import Workspace

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class CurvePoint:
    """One retraining on a subset."""

    fraction: float
    n_train: int
    train_error: float
    test_error: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def nested_subsets(labels: np.ndarray, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Stratified subsets, each containing the smaller ones (one random order per class).

    Every subset keeps at least one sample of each class present; indices are sorted.
    """
    labels = np.asarray(labels)
    g = np.random.default_rng(seed)
    orders = {c: g.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    out = []
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {f}")
        parts = [o[:max(1, int(round(f * len(o))))] for o in orders.values()]
        out.append(np.sort(np.concatenate(parts)))
    return out


def cache_key(model_id: str, dataset_id: str, fractions: Sequence[float], epochs: int, seed: int = 0) -> str:
    """Workspace run key of a learning curve (filesystem-safe)."""
    fr = "-".join(f"{round(f * 100)}" for f in fractions)
    return f"{_prefix(model_id, dataset_id)}_f{fr}_e{epochs}_s{seed}"


def _prefix(model_id: str, dataset_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"curve_{model_id}_{dataset_id}")[:80]


def learning_curve(build: Callable[[], nn.Module], data: ImageDataset, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   cfg: TrainConfig = TrainConfig(), seed: int = 0,
                   progress: Callable[[float, str], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> list[CurvePoint]:
    """Retrain ``build()`` from scratch on each fraction of the training set.

    Args:
        build: Returns a fresh, untrained model.
        data: The dataset.
        fractions: Shares of the training set, ascending.
        cfg: Training settings (the same for every subset; epochs are passes over the subset).
        seed: Seed of the subsets.
        progress: ``progress(fraction_done, message)`` across the whole curve.
        cancel: Polled between batches; raising :class:`nnlab.train.Cancelled` stops the curve.

    Returns:
        One point per fraction, in the order given.
    """
    subsets = nested_subsets(data.y_train.numpy(), fractions, seed)
    work = np.array([len(s) for s in subsets], dtype=np.float64)
    done_before = np.concatenate([[0.0], np.cumsum(work)])[:-1] / work.sum()
    points = []
    for i, (f, idx) in enumerate(zip(fractions, subsets)):
        def report(p: Progress, i: int = i, f: float = f) -> None:
            if progress is not None:
                progress(float(done_before[i] + p.fraction * work[i] / work.sum()),
                         f"{f:.0%} of the training set ({len(subsets[i]):,} samples): {p.message}")

        t0 = time.perf_counter()
        model = seeded_init(build(), seed * 1000 + i)  # the initial weights, reproducibly
        hist = train_model(model, data, cfg, indices=idx, progress=report, cancel=cancel)
        last = hist[-1]
        points.append(CurvePoint(float(f), int(len(idx)), 1.0 - last.train_acc, 1.0 - last.test_acc,
                                 time.perf_counter() - t0, [h.to_dict() for h in hist]))
    if progress is not None:
        progress(1.0, "done")
    return points


def cached_learning_curve(ws: Workspace, key: str, *args, **kwargs) -> tuple[list[CurvePoint], bool]:
    """:func:`learning_curve`, read from / written to the workspace run ``key``; returns (points, was_cached)."""
    points = load_curve(ws, key)
    if points is not None:
        return points, True
    points = learning_curve(*args, **kwargs)
    ws.save_run(key, {"points": [asdict(p) for p in points]})
    return points, False


def load_curve(ws: Workspace, key: str) -> list[CurvePoint] | None:
    """A cached curve, or None when absent or unreadable."""
    payload = ws.load_run(key)
    try:
        return [CurvePoint(**p) for p in payload["points"]] if payload else None
    except (KeyError, TypeError):
        return None


def error_slope(points: Sequence[CurvePoint]) -> float | None:
    """Change of E_test per doubling of the training set, over the last two points (negative: more data helps)."""
    pts = sorted(points, key=lambda p: p.n_train)
    if len(pts) < 2 or pts[-1].n_train <= pts[-2].n_train:
        return None
    a, b = pts[-2], pts[-1]
    return float((b.test_error - a.test_error) / np.log2(b.n_train / a.n_train))


def history_trend(history: Sequence[dict], key: str, last: int = 2) -> float | None:
    """Mean change per epoch of ``key`` over the last ``last`` epochs of a history (None if too short)."""
    vals = [h[key] for h in history if key in h and h[key] == h[key]]
    if len(vals) < last + 1:
        return None
    return float((vals[-1] - vals[-1 - last]) / last)


def cached_curves(ws: Workspace, model_id: str, dataset_id: str) -> list[tuple[str, list[CurvePoint]]]:
    """Every cached curve of a model on a dataset, newest first, as (key, points)."""
    prefix = _prefix(model_id, dataset_id)
    folder = ws.run_path(prefix).parent
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob(f"{prefix}_f*.json"), key=lambda q: q.stat().st_mtime, reverse=True):
        pts = load_curve(ws, p.stem)
        if pts:
            out.append((p.stem, pts))
    return out
