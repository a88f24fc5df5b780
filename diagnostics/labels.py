"""Suspected label errors by confident learning (Northcutt, Jiang & Chuang, JAIR 2021), through cleanlab.

Confident learning needs out-of-sample probabilities: the probability a model gives a sample it did not
train on. Two ways to get them are offered:

- ``"retrain"``: k-fold cross-validation of the architecture itself, retrained from scratch on k−1 folds
  and predicting the held-out fold (exact, costs k trainings; meant for small sets or a subsample).
- ``"features"``: the trained model's penultimate features with a cross-validated logistic regression
  (fast, for big sets). The features were learned with the given labels, so they are only partly
  out-of-sample; the page says so.

Either way each fold is one piece of :func:`nnlab.jobs.pieces.map_tasks` (Ray tasks, or in-process one after
another). The pieces read their inputs from ``.npy`` files in a folder they share with the caller (features,
labels, the fold of each sample), write their fold's probabilities there, and name the dataset and the model
builder by reference; what has no reference (a lambda builder, an unregistered dataset) keeps the folds
in-process.

:func:`find_label_issues` is cleanlab's ``filter.find_label_issues`` with ``filter_by="confident_learning"``
(the off-diagonals of the confident joint), ranked by self-confidence; the logistic regression that produces
the probabilities stays hand-made because it is several times faster than scikit-learn's on 50,000+ samples.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnlab.data.sets import ImageDataset
from nnlab.errors import Cancelled
from nnlab.evaluate import predict_logits
from nnlab.i18n import _, num
from nnlab.jobs import pieces as jobs
from nnlab.models.randinit import seeded_init
from nnlab.train import Progress, TrainConfig, train_model


@dataclass(frozen=True)
class LabelIssues:
    """Suspected label errors, most suspicious first.

    Attributes:
        indices: Sample indices (into the checked split or subset).
        given: The given label of each.
        suggested: The label the out-of-sample model believes.
        self_confidence: Out-of-sample probability of the given label (low = suspicious).
        thresholds: Per-class confidence thresholds (mean self-confidence of each class).
        confident_joint: ``K×K`` counts ``C[given, confident true]`` (diagonal clipped to ≥ 1 as cleanlab does).
        checked: How many samples were checked.
        method: How the out-of-sample probabilities were obtained.
    """

    indices: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    self_confidence: np.ndarray
    thresholds: np.ndarray
    confident_joint: np.ndarray
    checked: int
    method: str = ""

    @property
    def fraction(self) -> float:
        """Share of the checked samples flagged."""
        return len(self.indices) / self.checked if self.checked else 0.0


def confident_thresholds(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Per-class threshold t_j: the mean probability of class j over samples labelled j (2 when none).

    cleanlab's ``count.get_confident_thresholds``.
    """
    from cleanlab.count import get_confident_thresholds

    return get_confident_thresholds(np.asarray(labels, dtype=np.int64), np.asarray(pred_probs, dtype=np.float64))


def find_label_issues(labels: np.ndarray, pred_probs: np.ndarray) -> LabelIssues:
    """Confident learning: flag samples whose confidently estimated true label differs from the given one.

    cleanlab's ``filter.find_label_issues(filter_by="confident_learning", return_indices_ranked_by=
    "self_confidence")``: a sample is counted for class j when ``p_j ≥ t_j``, with several such classes the argmax
    decides; flagged are the samples counted off the diagonal of that confident joint, except those whose
    prediction (with a tie in favour of the given label) is the given label.

    Args:
        labels: ``N`` given labels.
        pred_probs: ``N×K`` out-of-sample probabilities.

    Returns:
        The issues, ordered by self-confidence (lowest first).
    """
    from cleanlab.count import compute_confident_joint
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues

    labels = np.asarray(labels, dtype=np.int64)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if pred_probs.ndim != 2 or len(labels) != len(pred_probs):
        raise ValueError(f"need N labels and N×K probabilities, got {labels.shape} and {pred_probs.shape}")
    n, k = pred_probs.shape
    if n == 0:
        idx, t, cj = np.zeros(0, dtype=np.int64), np.full(k, 2.0), np.eye(k, dtype=np.int64)
    else:
        t = confident_thresholds(labels, pred_probs)
        cj = compute_confident_joint(labels, pred_probs, thresholds=t, calibrate=False).astype(np.int64)
        # cleanlab refuses a single class; nothing can be counted off the diagonal then
        idx = np.zeros(0, dtype=np.int64) if len(np.unique(labels)) < 2 else np.asarray(
            cleanlab_find_label_issues(labels, pred_probs, filter_by="confident_learning",
                                       return_indices_ranked_by="self_confidence", n_jobs=1), dtype=np.int64)
    return LabelIssues(indices=idx, given=labels[idx], suggested=pred_probs[idx].argmax(axis=1),
                       self_confidence=pred_probs[idx, labels[idx]], thresholds=t, confident_joint=cj, checked=n)


# --- folds as pieces ---------------------------------------------------------------------------------------

def _folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    k = max(2, min(k, int(counts[counts > 0].min()))) if np.any(counts > 0) else 2
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _train, test in skf.split(np.zeros(len(labels)), labels)]


def _fold_of(parts: list[np.ndarray], n: int) -> np.ndarray:
    """The fold of each of ``n`` samples (``parts[f]`` holds fold f's sorted positions)."""
    fold = np.empty(n, dtype=np.int64)
    for f, held in enumerate(parts):
        fold[held] = f
    return fold


_LIVE: dict[str, Any] = {}  # objects without a reference, for in-process pieces: token → object
_LIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def _lent(objects: list[Any]) -> Iterator[list[str]]:
    """Let in-process pieces find these objects by the yielded tokens ({"live": token})."""
    tokens = [f"live-{id(o):x}-{os.urandom(4).hex()}" for o in objects]
    with _LIVE_LOCK:
        _LIVE.update(zip(tokens, objects))
    try:
        yield tokens
    finally:
        with _LIVE_LOCK:
            for t in tokens:
                _LIVE.pop(t, None)


def _resolve(ref: dict) -> Any:
    if "live" in ref:
        with _LIVE_LOCK:
            if ref["live"] not in _LIVE:
                raise RuntimeError("a live object reached a process that does not hold it (it has no reference)")
            return _LIVE[ref["live"]]
    if "function" in ref:
        module, name = ref["function"].split(":", 1)
        return getattr(importlib.import_module(module), name)
    return jobs.load_dataset_ref(ref["dataset"])


def _executor(use_ray: bool | None, live: bool) -> jobs.Executor:
    """Where the folds run: in-process when some object has no reference, else as :func:`map_tasks` decides."""
    return jobs.Executor("in-process", reason="objects without a reference") if live else jobs.executor(use_ray)


@contextlib.contextmanager
def _exchange(workdir: str | Path | None, ex: jobs.Executor) -> Iterator[Path]:
    """A private folder where the caller and the pieces exchange arrays; removed afterwards.

    By default the system's temporary folder, or the workspace (the folder every node shares) on a Ray cluster.
    """
    if workdir is None and ex.kind == "ray" and ex.address != "local":
        from nnlab import config

        workdir = config.workspace_dir() / "tmp"
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nnlab-folds-", dir=workdir) as tmp:
        yield Path(tmp)


def _save(folder: Path, name: str, array: np.ndarray) -> str:
    path = folder / f"{name}.npy"
    np.save(path, np.ascontiguousarray(array))
    return str(path)


def _run_folds(fn: Callable[[dict, jobs.Report], dict], pieces: list[dict], progress: jobs.ProgressFn | None,
               cancel: Callable[[], bool] | None, ex: jobs.Executor, threads: int | None) -> list[np.ndarray]:
    """Run one piece per fold through :func:`~nnlab.jobs.pieces.map_tasks`; each fold's probabilities.

    In-process the folds run one after another with this process's thread count unless ``threads`` says
    otherwise; on Ray each task gets ``threads`` (default 1).
    Raises :class:`~nnlab.errors.Cancelled` when cancelled, ``RuntimeError`` when a fold failed.
    """
    on_ray = ex.kind == "ray"
    n_threads = threads or (1 if on_ray else torch.get_num_threads())
    results = jobs.map_tasks(fn, pieces, progress, cancel, use_ray=on_ray, threads_per_task=n_threads)
    if any(r.status == "cancelled" for r in results):
        raise Cancelled(_("cancelled by the user"))
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"fold {failed[0].index + 1} of {len(pieces)} failed: {failed[0].error}")
    return [np.load(r.value["probs"]) for r in results]


# --- out-of-sample probabilities: k-fold retraining ---------------------------------------------------------

def retrain_fold(piece: dict, report: jobs.Report) -> dict:
    """Piece function: train a fresh model on every fold but ``piece["fold"]`` and predict that fold."""
    data = _resolve(piece["data"])
    if piece.get("labels"):
        data = _with_train_labels(data, np.load(piece["labels"]))
    idx, fold = np.load(piece["indices"]), np.load(piece["folds"])
    f = int(piece["fold"])
    held, train_part = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
    model = seeded_init(_resolve(piece["build"])(), int(piece["init_seed"]))  # the initial weights, reproducibly
    train_model(model, data, TrainConfig(**piece["config"]), indices=idx[train_part],
                progress=lambda p: report(p.message, p.fraction), cancel=report.cancelled)
    logits = predict_logits(model.eval(), data, "train", indices=idx[held])
    np.save(piece["out"], torch.softmax(torch.from_numpy(logits), dim=1).numpy())
    return {"probs": piece["out"], "rows": len(held)}


def crossval_probs_retrain(build: Callable[[], nn.Module], data: ImageDataset, cfg: TrainConfig,
                           indices: np.ndarray | None = None, labels: np.ndarray | None = None, folds: int = 4,
                           seed: int = 0, progress: Callable[[Progress], None] | None = None,
                           cancel: Callable[[], bool] | None = None, *, use_ray: bool | None = None,
                           threads: int | None = None, workdir: str | Path | None = None) -> np.ndarray:
    """Out-of-sample probabilities by k-fold retraining from scratch, one piece per fold.

    Args:
        build: Returns a fresh, untrained model. A module-level function travels by name (the folds may run
            on Ray); anything else (a lambda) keeps the folds in-process.
        data: The dataset (its training split is used); by reference when it has a registered key.
        cfg: Training settings of every fold.
        indices: Training-set indices to check (default: all).
        labels: Labels to train on (default: the dataset's); lets a test inject noisy labels.
        folds: Number of folds.
        seed: Seed of the fold split.
        progress: Receives progress of each fold's training (message prefixed with the fold; the loss is in the
            message, ``loss`` and ``accuracy`` are NaN: a piece reports text and a fraction).
        cancel: Stops between batches.
        use_ray: See :func:`nnlab.jobs.pieces.map_tasks`.
        threads: Intra-op threads per fold (default: this process's in-process, 1 per Ray task).
        workdir: Where the pieces exchange arrays (default: a temporary folder; on a Ray cluster a shared one).

    Returns:
        ``len(indices)×K`` probabilities, row i for ``indices[i]``.
    """
    idx = np.arange(len(data.y_train)) if indices is None else np.asarray(indices)
    y_all = data.y_train.numpy() if labels is None else np.asarray(labels)
    parts = _folds(y_all[idx], folds, seed)
    n_folds, epochs = len(parts), cfg.epochs
    batches = [max(1, -(-(len(idx) - len(p)) // cfg.batch_size)) for p in parts]  # training steps per epoch

    def report(i: int, message: str, fraction: float) -> None:
        if progress is not None:
            done = round(fraction * epochs * batches[i])
            epoch = max(1, -(-done // batches[i]))
            progress(Progress(epoch + i * epochs, epochs * n_folds, done - (epoch - 1) * batches[i], batches[i],
                              float("nan"), float("nan"), f"fold {i + 1}/{n_folds}: {message}"))

    try:
        build_ref: dict = {"function": jobs.function_path(build)}
    except ValueError:
        build_ref = {}
    try:
        data_ref: dict = {"dataset": jobs.dataset_ref(data)}
    except ValueError:
        data_ref = {}
    live = [o for o, r in ((build, build_ref), (data, data_ref)) if not r]
    ex = _executor(use_ray, bool(live))
    with _exchange(workdir, ex) as tmp, _lent(live) as tokens, \
            jobs.primed({jobs.ref_key(data_ref["dataset"]): data} if data_ref else {}):
        tok = iter(tokens)
        build_ref, data_ref = build_ref or {"live": next(tok)}, data_ref or {"live": next(tok)}
        shared = {"data": data_ref, "build": build_ref, "config": dataclasses.asdict(cfg),
                  "labels": _save(tmp, "labels", y_all) if labels is not None else "",
                  "indices": _save(tmp, "indices", idx), "folds": _save(tmp, "folds", _fold_of(parts, len(idx)))}
        pieces = [{**shared, "fold": f, "init_seed": seed * 1000 + f, "out": str(tmp / f"probs-{f}.npy")}
                  for f in range(n_folds)]
        out = _run_folds(retrain_fold, pieces, report, cancel, ex, threads)
    probs = np.zeros((len(idx), data.num_classes), dtype=np.float32)
    for held, p in zip(parts, out):
        probs[held] = p
    return probs


# --- out-of-sample probabilities: logistic regression on features ------------------------------------------

def logistic_regression_probs(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, k: int,
                              c: float = 1.0, max_iter: int = 500, tol: float = 1e-5,
                              dtype: torch.dtype = torch.float32,
                              cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """Class probabilities of ``x_eval`` from a multinomial logistic regression fitted on standardised features.

    The objective is scikit-learn's ``LogisticRegression(C=c)`` (multinomial, L2): ``½‖W‖² + C·Σ CE``, with the
    intercept unpenalised: the same optimum as scikit-learn (a test compares them), in a fraction of the time on
    50,000+ samples. Solved by full-batch L-BFGS with an analytic gradient, *preconditioned*: the weights are
    ``W = P·U`` with ``P = V·(Λ + 1/(C·n))^-½`` from the eigendecomposition ``VΛVᵀ`` of the standardised features'
    covariance, and L-BFGS works on ``U``. The objective (and so the optimum) is unchanged; correlated features no
    longer make it crawl (about 70 evaluations instead of 320 on 48,000 Fashion-MNIST features). ``tol`` is
    the gradient's max-norm at which it stops; float32 arithmetic by default (twice as fast; the probabilities
    agree with float64 to about 1e-3, far below what the label check resolves). ``cancel`` is polled at every
    evaluation (:class:`~nnlab.errors.Cancelled`).
    """
    mu = x_train.mean(axis=0, keepdims=True)
    sd = x_train.std(axis=0, keepdims=True)
    sd[sd < 1e-12] = 1.0
    xs = ((x_train - mu) / sd).astype(np.float64)
    n = len(xs)
    cov = xs.T @ xs / max(1, n)
    ev, vecs = np.linalg.eigh(cov)
    keep = ev > max(float(ev.max()), 1e-300) * 1e-10  # directions without variance (dead units): W is 0 there
    ev, vecs = ev[keep], vecs[:, keep]
    pre = vecs / np.sqrt(ev + 1.0 / (c * max(1, n)))  # W = pre @ U
    xt = torch.from_numpy(xs @ pre).to(dtype)  # the data in U's coordinates
    xe = torch.from_numpy(((x_eval - mu) / sd) @ pre).to(dtype)
    pt = torch.from_numpy(pre).to(dtype)
    y = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    onehot = torch.nn.functional.one_hot(y, k).to(dtype)
    u = torch.zeros(pre.shape[1], k, dtype=dtype, requires_grad=True)
    b = torch.zeros(k, dtype=dtype, requires_grad=True)
    opt = torch.optim.LBFGS([u, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        if cancel is not None and cancel():
            raise Cancelled(_("cancelled by the user"))
        with torch.no_grad():  # the gradient by hand: two matrix products, no autograd graph
            z = xt @ u + b
            lse = torch.logsumexp(z, dim=1, keepdim=True)
            w = pt @ u
            loss = lse.sum() - (z * onehot).sum() + 0.5 / c * (w * w).sum()
            r = torch.exp(z - lse) - onehot
            u.grad = ((r.T @ xt).T + pt.T @ w / c).div_(n).contiguous()
            b.grad = r.sum(dim=0).div_(n)
            return loss / n  # the same optimum, better-scaled for the line search

    from nnlab.threads import torch_threads

    # small problems run faster on one thread (the tiny ops of L-BFGS pay more for waking threads than they win)
    with torch_threads(1 if xt.numel() < 4_000_000 else None):
        opt.step(closure)
    with torch.no_grad():
        return torch.softmax((xe @ u + b).double(), dim=1).numpy()


def features_fold(piece: dict, report: jobs.Report) -> dict:
    """Piece function: fit the logistic regression on every fold but ``piece["fold"]`` and predict that fold."""
    feats = np.load(piece["features"]).astype(np.float64, copy=False)
    labels, fold = np.load(piece["labels"]), np.load(piece["folds"])
    f = int(piece["fold"])
    held, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
    report(_("logistic regression on {n} samples").format(n=num(len(train), ",d")), 0.0)
    probs = logistic_regression_probs(feats[train], labels[train], feats[held], int(piece["classes"]),
                                      float(piece["c"]), max_iter=int(piece["max_iter"]), cancel=report.cancelled)
    np.save(piece["out"], probs)
    report(_("{n} samples predicted").format(n=num(len(held), ",d")), 1.0)
    return {"probs": piece["out"], "rows": len(held)}


def crossval_probs_features(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0,
                            c: float = 1.0, max_iter: int = 60, progress: Callable[[str, float], None] | None = None,
                            cancel: Callable[[], bool] | None = None, *, use_ray: bool | None = None,
                            threads: int | None = None, workdir: str | Path | None = None) -> np.ndarray:
    """Out-of-sample probabilities from a cross-validated logistic regression on ``features``, one piece per fold.

    Each fold's fit stops after ``max_iter`` L-BFGS iterations: on the 60,000 Fashion-MNIST training features
    (demo CNN) the out-of-fold accuracy is then within 0.02 points of the converged fit (86.60 % against 86.62 %)
    and the flagged set within 3 %, in a quarter of the time (5.6 s against 22 s on 2 cores).

    Args:
        features: ``N×D`` features.
        labels: ``N`` labels.
        folds: Number of folds.
        seed: Seed of the fold split.
        c: Inverse L2 strength (scikit-learn's ``C``).
        max_iter: L-BFGS iterations per fold.
        progress: ``progress(message, fraction)`` over all folds.
        cancel: Polled at every L-BFGS evaluation.
        use_ray: See :func:`nnlab.jobs.pieces.map_tasks`.
        threads: Intra-op threads per fold (default: this process's in-process, 1 per Ray task).
        workdir: Where the pieces exchange arrays (default: a temporary folder; on a Ray cluster a shared one).

    Returns:
        ``N×K`` probabilities (float64).
    """
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    parts = _folds(labels, folds, seed)
    done = [0.0] * len(parts)

    def report(i: int, message: str, fraction: float) -> None:
        if progress is not None:
            done[i] = fraction
            progress(f"fold {i + 1}/{len(parts)}: {message}", sum(done) / len(parts))

    ex = _executor(use_ray, False)
    with _exchange(workdir, ex) as tmp:
        shared = {"features": _save(tmp, "features", np.asarray(features)), "labels": _save(tmp, "labels", labels),
                  "folds": _save(tmp, "folds", _fold_of(parts, len(labels))), "classes": k, "c": float(c),
                  "max_iter": int(max_iter)}
        pieces = [{**shared, "fold": f, "out": str(tmp / f"probs-{f}.npy")} for f in range(len(parts))]
        out = _run_folds(features_fold, pieces, report, cancel, ex, threads)
    probs = np.zeros((len(labels), k), dtype=np.float64)
    for held, p in zip(parts, out):
        probs[held] = p
    return probs


def _with_train_labels(data: ImageDataset, y: np.ndarray) -> ImageDataset:
    """A shallow copy of ``data`` with other training labels (same images, same normalisation)."""
    out = copy.copy(data)
    out.y_train = torch.as_tensor(y, dtype=torch.long)
    return out


def subsample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A stratified, sorted random subset of at most ``n`` indices."""
    if n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    idx, _rest = train_test_split(np.arange(len(labels)), train_size=n, random_state=seed, stratify=labels)
    return np.sort(idx)
