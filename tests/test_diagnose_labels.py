"""Confident learning against cleanlab 2.9, and recovery of flipped labels on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cleanlab.filter import find_label_issues as cleanlab_find

from diagnostics import labels as L
from nnlab.models.registry import create_model
from nnlab.train import TrainConfig


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
