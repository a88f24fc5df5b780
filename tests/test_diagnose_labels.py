"""Confident learning against cleanlab 2.9, the folds as pieces against a plain sequential loop, and recovery of
flipped labels on digits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from cleanlab.count import compute_confident_joint, get_confident_thresholds
from cleanlab.filter import find_label_issues as cleanlab_find

from diagnostics import labels as L
from nnlab.errors import Cancelled
from nnlab.evaluate import predict_logits
from nnlab.models.randinit import seeded_init
from nnlab.models.registry import create_model
from nnlab.train import TrainConfig, train_model


def small_cnn() -> torch.nn.Module:
    """A module-level builder: it travels to the pieces by name (a lambda stays in-process)."""
    return create_model("demo-cnn-small", 1, 10, (8, 8))


def _noisy(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    flipped = g.choice(len(y), int(fraction * len(y)), replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + g.integers(1, 10, len(flipped))) % 10
    return noisy, flipped


def _probs(n: int, k: int, seed: int, strength: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    y = g.integers(0, k, n)
    logits = g.normal(size=(n, k)) * 2
    logits[np.arange(n), y] += strength
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("n, k, seed", [(400, 3, 0), (1000, 10, 1), (300, 5, 2), (50, 4, 3)])
def test_same_issues_as_cleanlab(n, k, seed):
    y, p = _probs(n, k, seed)
    ours = L.find_label_issues(y, p)
    ref = cleanlab_find(y, p, filter_by="confident_learning")
    assert ref.sum() > 0
    assert sorted(ours.indices.tolist()) == np.flatnonzero(ref).tolist()
    assert np.all(np.diff(ours.self_confidence) >= 0)  # most suspicious first
    np.testing.assert_array_equal(ours.suggested, p[ours.indices].argmax(1))
    assert ours.confident_joint.sum() >= len(ours.indices)


def test_missing_class_and_bad_input():
    y, p = _probs(200, 4, 5)
    y[y == 3] = 0  # class 3 never given: threshold 2, nothing counted for it
    ours = L.find_label_issues(y, p)
    assert ours.thresholds[3] == 2.0
    assert sorted(ours.indices.tolist()) == np.flatnonzero(cleanlab_find(y, p, filter_by="confident_learning")).tolist()
    with pytest.raises(ValueError):
        L.find_label_issues(y[:10], p)


def test_flipped_digits_recovered_by_kfold_retraining(digits):
    """5 % of the training labels flipped (seeded); out-of-sample probabilities from 3-fold retraining."""
    g = np.random.default_rng(0)
    y = digits.y_train.numpy().copy()
    flipped = g.choice(len(y), int(0.05 * len(y)), replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + g.integers(1, 10, len(flipped))) % 10
    c, h, w = digits.input_shape
    probs = L.crossval_probs_retrain(lambda: create_model("demo-cnn-small", c, 10, (h, w)), digits,
                                     TrainConfig(epochs=10, lr=4e-3, batch_size=64, eval_test=False),
                                     labels=noisy, folds=3, seed=0)
    issues = L.find_label_issues(noisy, probs)
    found = set(issues.indices.tolist())
    recall = len(found & set(flipped.tolist())) / len(flipped)
    precision = len(found & set(flipped.tolist())) / max(1, len(found))
    print(f"flipped {len(flipped)}, flagged {len(found)}, recall {recall:.3f}, precision {precision:.3f}")
    assert recall >= 0.6
    assert precision >= 0.5
    # the suggestion is mostly the original label
    hit = np.isin(issues.indices, flipped)
    assert (issues.suggested[hit] == y[issues.indices[hit]]).mean() >= 0.8
    assert np.array_equal(digits.y_train.numpy(), y)  # the dataset was not changed


def test_features_route_and_subsample(digits):
    y = digits.y_train.numpy()
    sub = L.subsample(y, 500, seed=1)
    assert len(sub) == 500 and np.all(np.diff(sub) > 0)
    assert np.abs(np.bincount(y[sub], minlength=10) / 500 - np.bincount(y) / len(y)).max() < 0.01
    x = digits.x_train.numpy().reshape(len(y), -1).astype(np.float64)  # pixels as features
    probs = L.crossval_probs_features(x[sub], y[sub])
    assert probs.shape == (500, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert (probs.argmax(1) == y[sub]).mean() > 0.9  # out-of-fold accuracy of a linear model on digits


def test_logistic_regression_matches_scikit_learn():
    """Our L-BFGS multinomial logistic regression has scikit-learn's objective: the same probabilities."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from diagnostics.labels import logistic_regression_probs

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 16)) * rng.uniform(0.1, 5, size=16)
    y = (x @ rng.normal(size=(16, 4)) + rng.normal(size=(1500, 4)) * 3).argmax(1)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=10000, tol=1e-12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(x[:1000], y[:1000])
    expected = ref.predict_proba(x[1000:])
    # in float64 with a tight tolerance: the same optimum (the preconditioning does not change the objective)
    exact = logistic_regression_probs(x[:1000], y[:1000], x[1000:], 4, c=0.5, tol=1e-9, dtype=torch.float64)
    assert np.abs(exact - expected).max() < 1e-5
    # the defaults the data checks use (float32, gradient max-norm 1e-5): within a few 1e-4
    fast = logistic_regression_probs(x[:1000], y[:1000], x[1000:], 4, c=0.5)
    assert np.abs(fast - expected).max() < 1e-3


# --- the folds as pieces (nnlab.jobs.pieces.map_tasks, in-process: the suite sets NNLAB_RAY=0) ----------------

def test_feature_folds_as_pieces_equal_a_sequential_loop_and_cleanlab_agrees(digits, tmp_path):
    """Out-of-fold probabilities from the pieces are exactly the plain fold-after-fold computation, and the issues
    found on them are cleanlab's (confident learning, ranked by self-confidence)."""
    y = digits.y_train.numpy()
    sub = L.subsample(y, 600, seed=2)
    x = digits.x_train.numpy().reshape(len(y), -1)[sub].astype(np.float32)  # pixels as features
    noisy, flipped = _noisy(y[sub], 0.08, seed=1)
    seen: list[tuple[str, float]] = []
    probs = L.crossval_probs_features(x, noisy, folds=4, seed=3, max_iter=40,
                                      progress=lambda m, f: seen.append((m, f)), workdir=tmp_path)
    expected = np.zeros_like(probs)
    for held in L._folds(noisy, 4, 3):
        train = np.setdiff1d(np.arange(len(noisy)), held)
        expected[held] = L.logistic_regression_probs(x[train].astype(np.float64), noisy[train],
                                                     x[held].astype(np.float64), 10, max_iter=40)
    np.testing.assert_array_equal(probs, expected)
    assert list(tmp_path.iterdir()) == []  # the exchange folder is gone
    assert {m.split(":")[0] for m, _ in seen} == {f"fold {i}/4" for i in range(1, 5)}
    assert seen[-1][1] == 1.0 and all(b >= a for (_, a), (_, b) in itertools.pairwise(seen))

    ours = L.find_label_issues(noisy, probs)
    ranked = cleanlab_find(noisy, probs, filter_by="confident_learning", return_indices_ranked_by="self_confidence")
    mask = cleanlab_find(noisy, probs, filter_by="confident_learning")
    assert len(flipped) > 0 and mask.sum() > 0
    assert sorted(ours.indices.tolist()) == np.flatnonzero(mask).tolist()
    np.testing.assert_array_equal(np.sort(ours.self_confidence), np.sort(probs[ranked, noisy[ranked]]))
    assert np.all(np.diff(ours.self_confidence) >= 0)
    np.testing.assert_array_equal(ours.confident_joint, compute_confident_joint(noisy, probs, calibrate=False))
    np.testing.assert_array_equal(ours.thresholds, get_confident_thresholds(noisy, probs))
    assert len(set(ours.indices.tolist()) & set(flipped.tolist())) >= 0.5 * len(flipped)  # it finds flips


def test_feature_folds_cancel(digits, tmp_path):
    y = digits.y_train.numpy()
    x = digits.x_train.numpy().reshape(len(y), -1)
    calls: list[float] = []
    with pytest.raises(Cancelled):
        L.crossval_probs_features(x, y, progress=lambda m, f: calls.append(f), cancel=lambda: len(calls) > 0,
                                  workdir=tmp_path)
    assert calls and max(calls) < 1.0  # stopped inside the first fold
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("build", [small_cnn, lambda: small_cnn()], ids=["by-name", "lambda-in-process"])
def test_retrain_folds_as_pieces_equal_a_sequential_loop(digits, build, tmp_path):
    """k-fold retraining through the pieces gives the plain loop's probabilities (the dataset by reference or
    live, noisy labels through a file), with progress per fold."""
    y = digits.y_train.numpy()
    idx = L.subsample(y, 300, seed=4)
    noisy, _ = _noisy(y, 0.05, seed=5)
    cfg = TrainConfig(epochs=2, lr=4e-3, batch_size=64, eval_test=False)
    seen = []
    probs = L.crossval_probs_retrain(build, digits, cfg, indices=idx, labels=noisy, folds=2, seed=1,
                                     progress=seen.append, workdir=tmp_path)
    work = L._with_train_labels(digits, noisy)
    expected = np.zeros((len(idx), 10), dtype=np.float32)
    for f, held in enumerate(L._folds(noisy[idx], 2, 1)):
        model = seeded_init(small_cnn(), 1000 + f)
        train_model(model, work, cfg, indices=idx[np.setdiff1d(np.arange(len(idx)), held)])
        expected[held] = torch.softmax(torch.from_numpy(predict_logits(model.eval(), work, "train",
                                                                       indices=idx[held])), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert list(tmp_path.iterdir()) == []
    assert np.array_equal(digits.y_train.numpy(), y)  # the dataset was not changed
    assert {p.message.split(":")[0] for p in seen} == {"fold 1/2", "fold 2/2"}
    assert seen[-1].fraction == 1.0 and all(b.fraction >= a.fraction for a, b in itertools.pairwise(seen))
    assert seen[-1].epochs == 4 and seen[-1].epoch == 4


def test_retrain_folds_cancel(digits):
    cfg = TrainConfig(epochs=3, lr=4e-3, batch_size=32, eval_test=False)
    seen = []
    with pytest.raises(Cancelled):
        L.crossval_probs_retrain(small_cnn, digits, cfg, indices=np.arange(400), folds=2, progress=seen.append,
                                 cancel=lambda: len(seen) > 2)
    assert seen and seen[-1].epoch == 1  # stopped in the first fold's first epoch
