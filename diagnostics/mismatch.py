"""Train/test mismatch: class-frequency shift, pixel statistics, intensity histograms, a domain classifier
on the model's penultimate features, and near-duplicates across the splits (leakage).

The penultimate features are the input of the model's last ``nn.Linear``, captured by a forward pre-hook
that is always removed (``try/finally``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nnlab.data.sets import ImageDataset
from nnlab.errors import Cancelled
from nnlab.i18n import N_, _, num

# --- penultimate features ---------------------------------------------------------------------------------

_FEATURES_OF = {"train": N_("features of the train split: {done}/{n} images"),
                "test": N_("features of the test split: {done}/{n} images")}


def _features_message(split: str, done: int, n: int) -> str:
    """The progress of a feature pass, in the current language."""
    template = _(_FEATURES_OF[split]) if split in _FEATURES_OF else f"features of the {split} split: {{done}}/{{n}} images"
    return template.format(done=num(done, ",d"), n=num(n, ",d"))


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` module of ``model`` (its classifier head)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(_("the model has no nn.Linear layer, so it has no penultimate features to read"))
    return linears[-1]


class _FeaturesThenLogits(nn.Module):
    """Stands in for a classifier head: returns its flattened input and its output side by side."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.flatten(1), self.head(x)], dim=1)


def feature_model(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module | None:
    """A private copy of ``model`` whose output is ``[penultimate features | logits]`` in one tensor.

    One output, so any runtime (ONNX Runtime, OpenVINO) can run the feature pass at its speed. None when the
    head is not the model's last operation (checked on a probe batch against the model's own logits).
    """
    import copy

    work = copy.deepcopy(model).eval()
    head = last_linear(work)
    names = [n for n, m in work.named_modules() if m is head]
    if not names or not names[0]:
        return None
    parent_name, _sep, attr = names[0].rpartition(".")
    parent = work.get_submodule(parent_name) if parent_name else work
    setattr(parent, attr, _FeaturesThenLogits(head))
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model.eval()(x) if not model.training else None
        out = work(x)
    if ref is None or out.ndim != 2 or out.shape[1] != head.in_features + head.out_features or not torch.allclose(
            out[:, head.in_features:], ref, atol=1e-5):
        return None
    return work


def features_and_logits(model: nn.Module, data: ImageDataset, split: str, indices: np.ndarray | None = None,
                        batch_size: int = 512, progress: Callable[[str, float], None] | None = None,
                        cancel: Callable[[], bool] | None = None, runner: Any = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (flattened input of the last linear layer) and logits, in one pass.

    ``runner``: a runtime executing :func:`feature_model` of this model (its output is features and logits
    side by side); then no hook is used. Otherwise a hook on the head reads the features; it is removed
    afterwards, also on error, and the train/eval mode is restored. A model shared with other threads (a
    cached model) should be deep-copied first: their passes would run the hook too.
    """
    if runner is not None:
        head = last_linear(model)
        n = len(indices) if indices is not None else len(data.labels(split))
        feats, logits = [], []
        for x, _y in data.stream(split, batch_size, indices=indices):
            if cancel is not None and cancel():
                raise Cancelled(_("cancelled by the user"))
            out = np.asarray(runner.predict_logits(x.numpy()), dtype=np.float32)
            feats.append(out[:, :head.in_features])
            logits.append(out[:, head.in_features:])
            if progress is not None:
                done = sum(len(t) for t in logits)
                progress(_features_message(split, done, n), done / max(1, n))
        if not logits:
            return np.zeros((0, head.in_features), np.float32), np.zeros((0, head.out_features), np.float32)
        return np.concatenate(feats), np.concatenate(logits)
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
            for x, _y in data.stream(split, batch_size, indices=indices):
                if cancel is not None and cancel():
                    raise Cancelled(_("cancelled by the user"))
                logits.append(model(x.to(device)).float().cpu())
                if progress is not None:
                    done = sum(len(t) for t in logits)
                    progress(_features_message(split, done, n), done / max(1, n))
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


def _hist(x: torch.Tensor, bins: int, density: bool = True) -> np.ndarray:
    """Per-channel histogram of uint8 images over ``bins`` equal bins of 0–255 (densities, or counts)."""
    out = []
    for c in range(x.shape[1]):
        h = torch.bincount((x[:, c].reshape(-1).long() * bins) // 256, minlength=bins).double().numpy()
        out.append(h / max(1.0, h.sum()) if density else h)
    return np.stack(out)


def pixel_stats(data: ImageDataset, bins: int = 32, max_images: int = 20000, seed: int = 0,
                batch: int = 512) -> PixelStats:
    """Pixel statistics of both splits (on at most ``max_images`` random images each), read batch by batch."""
    g = np.random.default_rng(seed)

    def part(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = data.images(split)
        idx = np.arange(len(x)) if len(x) <= max_images else np.sort(g.choice(len(x), max_images, False))
        s = ss = hist = None
        count = 0
        for start in range(0, len(idx), batch):
            u = x[torch.from_numpy(idx[start:start + batch])]
            b = u.double().div(255)
            bs, bss, bh = b.sum(dim=(0, 2, 3)), (b * b).sum(dim=(0, 2, 3)), _hist(u, bins, density=False)
            s, ss, hist = (bs, bss, bh) if s is None else (s + bs, ss + bss, hist + bh)
            count += b.shape[0] * b.shape[2] * b.shape[3]
        mean = s / count
        std = ((ss / count - mean**2).clamp_min(0) * count / max(1, count - 1)).sqrt()
        return mean.float().numpy(), std.float().numpy(), hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)

    (trm, trs, trh), (tem, tes, teh) = part("train"), part("test")
    return PixelStats(trm, trs, tem, tes, np.linspace(0, 1, bins + 1), trh, teh)


# --- domain classifier ------------------------------------------------------------------------------------------

def domain_auc(train_features: np.ndarray, test_features: np.ndarray, max_per_split: int = 10000,
               folds: int = 5, seed: int = 0) -> float:
    """ROC AUC of a classifier telling test from train samples, cross-validated.

    Equal-sized random subsets of both splits (every test sample when the test split is the smaller one and
    has at most ``max_per_split``), a logistic regression on standardised features, and the AUC of its
    out-of-fold scores. About 0.5 means the splits cannot be told apart; near 1 means they differ
    systematically.
    """
    scores, y = domain_scores(train_features, test_features, max_per_split, folds, seed)
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores))


def domain_scores(train_features: np.ndarray, test_features: np.ndarray, max_per_split: int = 10000,
                  folds: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold "is test" probabilities of the balanced domain-classifier sample, and its 0/1 labels."""
    scores, y, _idx = _domain_scores(train_features, test_features, max_per_split, folds, seed)
    return scores, y


@dataclass(frozen=True)
class DomainScores:
    """The domain classifier's verdict: AUC, and how "test-like" each scored test sample looks."""

    auc: float
    test_index: np.ndarray  # test samples scored (indices into the test split)
    test_score: np.ndarray  # out-of-fold probability that each is a test sample (0.5: indistinguishable)


def domain_classifier(train_features: np.ndarray, test_features: np.ndarray, max_per_split: int = 10000,
                      folds: int = 5, seed: int = 0) -> DomainScores:
    """:func:`domain_auc` with the per-sample scores: which test samples look most unlike the training set."""
    from sklearn.metrics import roc_auc_score

    scores, y, test_index = _domain_scores(train_features, test_features, max_per_split, folds, seed)
    return DomainScores(float(roc_auc_score(y, scores)), test_index, scores[y == 1])


def _domain_scores(train_features: np.ndarray, test_features: np.ndarray, max_per_split: int, folds: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from diagnostics.labels import logistic_regression_probs

    g = np.random.default_rng(seed)
    n = min(len(train_features), len(test_features), max_per_split)
    if n < folds * 2:
        raise ValueError(_("too few samples for a domain classifier ({n} per split)").format(n=n))
    ia = g.choice(len(train_features), n, replace=False)
    ib = g.choice(len(test_features), n, replace=False)
    x = np.concatenate([train_features[ia], test_features[ib]]).astype(np.float64)
    y = np.r_[np.zeros(n, np.int64), np.ones(n, np.int64)]
    order = g.permutation(len(y))
    scores = np.zeros(len(y))
    for f in range(folds):
        held = order[f::folds]
        train = np.setdiff1d(order, held)
        scores[held] = logistic_regression_probs(x[train], y[train], x[held], 2)[:, 1]
    return scores, y, ib.astype(np.int64)


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
    diff = np.zeros(len(rows))
    for start in range(0, len(rows), 256):  # pairs compared a batch at a time: bounded memory at any size
        r, c = rows[start:start + 256], cols[start:start + 256]
        a = data.x_test[torch.from_numpy(tei[r])].float() / 255
        b = data.x_train[torch.from_numpy(tri[nn_i[r, c]])].float() / 255
        diff[start:start + len(r)] = (a - b).abs().mean(dim=(1, 2, 3)).numpy()
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
