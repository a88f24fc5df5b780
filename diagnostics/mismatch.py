"""Train/test mismatch: class-frequency shift, pixel statistics, intensity histograms, a domain classifier
on the model's penultimate features, and near-duplicates across the splits (leakage).

The penultimate features are the input of the model's last ``nn.Linear``, captured by a forward pre-hook
that is always removed (``try/finally``).
"""

from __future__ import annotations

from collections.abc import Callable

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nnlab.data import ImageDataset
from nnlab.train import Cancelled


# --- penultimate features ---------------------------------------------------------------------------------

def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` module of ``model`` (its classifier head)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer, so it has no penultimate features to read")
    return linears[-1]


def features_and_logits(model: nn.Module, data: ImageDataset, split: str, indices: np.ndarray | None = None,
                        batch_size: int = 512, progress: Callable[[str, float], None] | None = None,
                        cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (flattened input of the last linear layer) and logits, in one pass.

    The hook is removed afterwards, also on error, and the train/eval mode is restored. A model shared
    with other threads (a cached model) should be deep-copied first: their passes would run the hook too.
    """
    head = last_linear(model)
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach().flatten(1).float().cpu())

    was_training = model.training
    handle = head.register_forward_pre_hook(grab)
    logits = []
    n = len(indices) if indices is not None else len(data.labels(split))
    try:
        model.eval()
        with torch.inference_mode():
            for x, _ in data.batches(split, batch_size, indices=indices):
                if cancel is not None and cancel():
                    raise Cancelled("cancelled by the user")
                logits.append(model(x.to(device)).float().cpu())
                if progress is not None:
                    done = sum(len(t) for t in logits)
                    progress(f"features of the {split} split: {done:,}/{n:,} images", done / max(1, n))
    finally:
        handle.remove()
        model.train(was_training)
    if not logits:
        return np.zeros((0, head.in_features), np.float32), np.zeros((0, head.out_features), np.float32)
    return torch.cat(captured).numpy(), torch.cat(logits).numpy()


# --- class frequencies and pixel statistics --------------------------------------------------------------------

@dataclass(frozen=True)
class ClassShift:
    """Class frequencies of train and test and how far apart they are."""

    train_freq: np.ndarray
    test_freq: np.ndarray
    tv_distance: float  # total variation distance, 0 (same) … 1 (disjoint)
    chi2_p: float  # p-value of a chi-square test that test counts follow the train frequencies

    @property
    def diff(self) -> np.ndarray:
        return self.test_freq - self.train_freq


def class_shift(train_counts: np.ndarray, test_counts: np.ndarray) -> ClassShift:
    """Compare class frequencies of the two splits."""
    from scipy.stats import chisquare

    tr = np.asarray(train_counts, dtype=np.float64)
    te = np.asarray(test_counts, dtype=np.float64)
    ftr, fte = tr / max(1.0, tr.sum()), te / max(1.0, te.sum())
    keep = ftr > 0
    expected = ftr[keep] * te.sum()
    p = float(chisquare(te[keep], expected * te[keep].sum() / expected.sum()).pvalue) if keep.sum() > 1 else 1.0
    return ClassShift(ftr, fte, float(0.5 * np.abs(ftr - fte).sum()), p)


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest class count over the smallest (inf when a class is empty)."""
    counts = np.asarray(counts)
    return float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")


@dataclass(frozen=True)
class PixelStats:
    """Per-channel pixel mean and std (0–1 scale) of each split, and intensity histograms."""

    train_mean: np.ndarray
    train_std: np.ndarray
    test_mean: np.ndarray
    test_std: np.ndarray
    bins: np.ndarray  # bin edges, 0–1
    train_hist: np.ndarray  # channels × bins, densities summing to 1 per channel
    test_hist: np.ndarray

    @property
    def mean_shift(self) -> np.ndarray:
        """Test mean minus train mean, in units of the train std, per channel."""
        return (self.test_mean - self.train_mean) / np.maximum(self.train_std, 1e-6)

    @property
    def hist_distance(self) -> np.ndarray:
        """Total variation distance between the intensity histograms, per channel."""
        return 0.5 * np.abs(self.train_hist - self.test_hist).sum(axis=1)


def _hist(x: torch.Tensor, bins: int) -> np.ndarray:
    out = []
    for c in range(x.shape[1]):
        h = torch.bincount((x[:, c].reshape(-1).long() * bins) // 256, minlength=bins).double().numpy()
        out.append(h / max(1.0, h.sum()))
    return np.stack(out)


def pixel_stats(data: ImageDataset, bins: int = 32, max_images: int = 20000, seed: int = 0) -> PixelStats:
    """Pixel statistics of both splits (on at most ``max_images`` random images each)."""
    g = np.random.default_rng(seed)

    def part(split: str) -> torch.Tensor:
        x = data.images(split)
        return x if len(x) <= max_images else x[torch.from_numpy(np.sort(g.choice(len(x), max_images, False)))]

    tr, te = part("train"), part("test")
    ms = [(x.float().div(255).mean(dim=(0, 2, 3)).numpy(), x.float().div(255).std(dim=(0, 2, 3)).numpy())
          for x in (tr, te)]
    return PixelStats(ms[0][0], ms[0][1], ms[1][0], ms[1][1], np.linspace(0, 1, bins + 1), _hist(tr, bins),
                      _hist(te, bins))


# --- domain classifier ------------------------------------------------------------------------------------------

def domain_auc(train_features: np.ndarray, test_features: np.ndarray, max_per_split: int = 5000,
               folds: int = 5, seed: int = 0) -> float:
    """ROC AUC of a classifier telling test from train samples, cross-validated.

    Equal-sized random subsets of both splits, a logistic regression on standardised features, and the
    AUC of its out-of-fold scores. About 0.5 means the splits cannot be told apart; near 1 means they
    differ systematically.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    g = np.random.default_rng(seed)
    n = min(len(train_features), len(test_features), max_per_split)
    if n < folds * 2:
        raise ValueError(f"too few samples for a domain classifier ({n} per split)")
    a = train_features[g.choice(len(train_features), n, replace=False)]
    b = test_features[g.choice(len(test_features), n, replace=False)]
    x = np.concatenate([a, b]).astype(np.float64)
    y = np.r_[np.zeros(n), np.ones(n)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(clf, x, y, cv=cv, method="decision_function")
    return float(roc_auc_score(y, scores))


# --- near-duplicates ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Duplicates:
    """Test samples with a near-identical training sample: close in feature space and in pixels."""

    test_index: np.ndarray
    train_index: np.ndarray
    similarity: np.ndarray  # cosine similarity of the centred features
    pixel_diff: np.ndarray  # mean absolute pixel difference of the pair, 0–1
    same_label: np.ndarray
    threshold: float
    pixel_threshold: float
    checked: int


def nearest_train(train_features: np.ndarray, test_features: np.ndarray, k: int = 5,
                  chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each test row: indices of and cosine similarities to its ``k`` nearest training rows.

    Features are centred on the training mean first: post-ReLU features are all positive, and raw
    cosine similarity calls almost any two samples similar.
    """
    tr = torch.from_numpy(np.ascontiguousarray(train_features, dtype=np.float32))
    te = torch.from_numpy(np.ascontiguousarray(test_features, dtype=np.float32))
    centre = tr.mean(dim=0, keepdim=True)
    tr, te = tr - centre, te - centre
    tr = tr / tr.norm(dim=1, keepdim=True).clamp_min(1e-12)
    te = te / te.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(k, len(tr))
    best_i, best_s = [], []
    for s in range(0, len(te), chunk):
        v, i = (te[s:s + chunk] @ tr.T).topk(k, dim=1)
        best_s.append(v)
        best_i.append(i)
    if not best_s:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return torch.cat(best_i).numpy(), torch.cat(best_s).numpy()


def near_duplicates(data: ImageDataset, train_features: np.ndarray, test_features: np.ndarray,
                    threshold: float = 0.98, pixel_threshold: float = 0.02, k: int = 5,
                    train_index: np.ndarray | None = None, test_index: np.ndarray | None = None) -> Duplicates:
    """Test samples whose training neighbour is near-identical: leakage between the splits.

    Candidates are each test sample's ``k`` nearest training samples by cosine similarity of the
    (centred) features; a pair counts when the similarity is ≥ ``threshold`` and the images differ by at
    most ``pixel_threshold`` (mean absolute difference on the 0–1 scale). A classifier's penultimate
    features put most samples of a class close together, so features alone would flag look-alikes, not
    copies. ``train_index``/``test_index`` map feature rows back to dataset indices when the features
    cover a subset. Pairs are sorted by pixel difference, smallest first.
    """
    tri = np.arange(len(train_features)) if train_index is None else np.asarray(train_index)
    tei = np.arange(len(test_features)) if test_index is None else np.asarray(test_index)
    nn_i, nn_s = nearest_train(train_features, test_features, k)
    rows, cols = np.nonzero(nn_s >= threshold)
    if len(rows):
        a = data.x_test[torch.from_numpy(tei[rows])].float() / 255
        b = data.x_train[torch.from_numpy(tri[nn_i[rows, cols]])].float() / 255
        diff = (a - b).abs().mean(dim=(1, 2, 3)).numpy()
    else:
        diff = np.zeros(0)
    best: dict[int, tuple[float, int, float]] = {}
    for r, c, dv in zip(rows, cols, diff):
        if dv <= pixel_threshold and (r not in best or dv < best[r][0]):
            best[int(r)] = (float(dv), int(nn_i[r, c]), float(nn_s[r, c]))
    hit = sorted(best, key=lambda r: (best[r][0], r))
    te_idx = tei[np.asarray(hit, dtype=np.int64)]
    tr_idx = tri[np.asarray([best[r][1] for r in hit], dtype=np.int64)]
    return Duplicates(te_idx, tr_idx, np.asarray([best[r][2] for r in hit]), np.asarray([best[r][0] for r in hit]),
                      data.y_test.numpy()[te_idx] == data.y_train.numpy()[tr_idx], threshold, pixel_threshold,
                      len(tei))
