"""Learning curves by training-set size: the lecture's "train on a subset of smaller size".

The architecture is retrained from scratch on nested, stratified subsets (10/25/50/100 % by default);
each point gives E_train (on the subset it trained on) and E_test (on the test split). The retrainings are
independent pieces of :func:`nnlab.jobs.pieces.map_tasks` (Ray tasks, or in-process one after another). Results
are cached in the workspace under a key made of model, dataset, fractions and epochs.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from nnlab.data.sets import ImageDataset
from nnlab.i18n import _, num
from nnlab.jobs.pieces import (
    Report,
    dataset_ref,
    executor,
    load_dataset_ref,
    map_tasks,
    raise_for_outcome,
    node_name,
    primed,
    ref_key,
)
from nnlab.models.randinit import seeded_init
from nnlab.models.registry import create_model
from nnlab.train import TrainConfig, train_model
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
                   cancel: Callable[[], bool] | None = None, *, arch: str | None = None,
                   data_ref: dict | None = None, use_ray: bool | None = None,
                   threads: int | None = None) -> list[CurvePoint]:
    """Retrain ``build()`` from scratch on each fraction of the training set.

    Each fraction is a piece of :func:`nnlab.jobs.pieces.map_tasks`: a Ray task when Ray is on and the pieces can
    rebuild the model and load the data by reference (``arch`` given, the data registered), in-process otherwise
    (the caller's ``build`` and ``data``, one fraction after another). Both give the same points.

    Args:
        build: Returns a fresh, untrained model.
        data: The dataset.
        fractions: Shares of the training set, ascending.
        cfg: Training settings (the same for every subset; epochs are passes over the subset).
        seed: Seed of the subsets.
        progress: ``progress(fraction_done, message)`` across the whole curve.
        cancel: Polled between batches; raising :class:`nnlab.train.Cancelled` stops the curve.
        arch: The architecture ``build`` makes (``create_model(arch, C, classes, (H, W))``), so that Ray workers can
            build it too; without it the pieces run in-process.
        data_ref: How Ray workers load ``data`` (default: :func:`nnlab.jobs.pieces.dataset_ref` of it).
        use_ray: True: Ray; False: in-process; None: Ray unless ``NNLAB_RAY=0``.
        threads: Intra-op threads of each retraining (default: this process's current count in-process, 1 on
            Ray).

    Returns:
        One point per fraction, in the order given.

    Raises:
        nnlab.train.Cancelled: ``cancel()`` returned True.
        RuntimeError: A retraining failed (every failed fraction named, with its error).
    """
    subsets = nested_subsets(data.y_train.numpy(), fractions, seed)
    work = np.array([len(s) for s in subsets], dtype=np.float64)
    dref, why = _data_ref(data, data_ref)
    if arch is None:
        why = why or "no architecture key: workers cannot rebuild the model"
    on_ray = not why and executor(use_ray).kind == "ray"
    token = os.urandom(8).hex()  # in-process pieces use the caller's build() (see _builder)
    spec = {"live": token, **({"arch": arch} if arch is not None else {})}
    base = {"data": dref, "build": spec, "fractions": [float(f) for f in fractions], "seed": int(seed),
            "cfg": asdict(cfg)}
    pieces = [{**base, "index": i} for i in range(len(fractions))]
    labels = [_("{fraction} of the training set ({n} samples)").format(fraction=num(f, ".0%"), n=num(len(s), ",d"))
              for f, s in zip(fractions, subsets)]
    n_threads = threads or (1 if on_ray else torch.get_num_threads())
    with _lend(token, build), primed({} if on_ray else {ref_key(dref): data}):
        results = map_tasks(curve_piece, pieces, _overall(progress, labels, work), cancel, use_ray=on_ray,
                            threads_per_task=n_threads)
    raise_for_outcome(results, labels, _("learning curve"))
    if progress is not None:
        progress(1.0, _("done"))
    return [CurvePoint(**r.value) for r in results]


def curve_piece(piece: dict, report: Report) -> dict:
    """Piece function: retrain from scratch on subset ``piece["index"]``; returns the :class:`CurvePoint` as a dict.

    The piece holds the data reference, how to build the model (``"live"``: a token of the caller's own ``build``,
    found in the caller's process only; ``"arch"``: the architecture key, for other processes), the fractions, the
    seed and the training settings.
    """
    data = load_dataset_ref(piece["data"])
    i, fractions, seed = int(piece["index"]), piece["fractions"], int(piece["seed"])
    idx = nested_subsets(data.y_train.numpy(), fractions, seed)[i]
    build = _builder(piece["build"], data)
    t0 = time.perf_counter()
    model = seeded_init(build(), seed * 1000 + i)  # the initial weights, reproducibly
    hist = train_model(model, data, TrainConfig(**piece["cfg"]), indices=idx,
                       progress=lambda p: report(p.message, p.fraction), cancel=report.cancelled)
    last = hist[-1]
    point = CurvePoint(float(fractions[i]), len(idx), 1.0 - last.train_acc, 1.0 - last.test_acc,
                       time.perf_counter() - t0, [h.to_dict() for h in hist])
    return asdict(point)


# The caller's own build() for in-process pieces: JSON pieces name it by a token, valid while map_tasks runs.
_LIVE: dict[str, Callable[[], nn.Module]] = {}
_LIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def _lend(token: str, build: Callable[[], nn.Module]) -> Iterator[None]:
    with _LIVE_LOCK:
        _LIVE[token] = build
    try:
        yield
    finally:
        with _LIVE_LOCK:
            _LIVE.pop(token, None)


def _builder(spec: dict, data: ImageDataset) -> Callable[[], nn.Module]:
    """The caller's build() in its own process; elsewhere the architecture ``spec["arch"]`` built for the data."""
    with _LIVE_LOCK:
        build = _LIVE.get(spec.get("live", ""))
    if build is not None:
        return build
    if "arch" not in spec:
        raise ValueError(_("the model builder of this curve lives in the caller's process, not on {node}").format(
            node=node_name()))
    c, h, w = data.input_shape
    return lambda: create_model(spec["arch"], c, data.num_classes, (h, w))


def _data_ref(data: ImageDataset, given: dict | None) -> tuple[dict, str]:
    """The data reference of the pieces and, when workers cannot load the data, why."""
    if given is not None:
        return given, ""
    try:
        return dataset_ref(data), ""
    except ValueError as exc:
        return {"key": data.id, "path": "", "preprocessing": None, "id": data.id}, f"the data cannot be shared: {exc}"


def _overall(progress: Callable[[float, str], None] | None, labels: list[str],
             work: np.ndarray) -> Callable[[int, str, float], None] | None:
    """Per-fraction progress → one monotone progress of the curve, weighted by subset size."""
    if progress is None:
        return None
    done = np.zeros(len(labels))
    shown = [0.0]

    def on_piece(i: int, message: str, fraction: float) -> None:
        done[i] = max(done[i], fraction)
        shown[0] = max(shown[0], float((done * work).sum() / work.sum()))
        progress(shown[0], f"{labels[i]}: {message}")

    return on_piece


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
