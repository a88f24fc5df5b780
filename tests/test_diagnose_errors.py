"""Error analysis against scikit-learn, and ranking, filtering and paging against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from diagnostics import errors


def _random_eval(n: int = 500, k: int = 6, seed: int = 0):
    g = np.random.default_rng(seed)
    labels = g.integers(0, k, n)
    logits = g.normal(size=(n, k)) * 2
    logits[np.arange(n), labels] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    losses = -np.log(probs[np.arange(n), labels])
    return probs, losses, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_and_confusion_equal_sklearn(seed):
    probs, losses, labels = _random_eval(seed=seed)
    k = probs.shape[1]
    preds = probs.argmax(1)
    if seed == 2:  # a class never predicted and a class never present: zero_division cases
        preds[preds == 4] = 0
        labels = np.where(labels == 5, 1, labels)
    m = errors.class_metrics(labels, preds, k)
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=range(k), zero_division=0)
    np.testing.assert_allclose(m.precision, p)
    np.testing.assert_allclose(m.recall, r)
    np.testing.assert_allclose(m.f1, f)
    np.testing.assert_array_equal(m.support, s)
    cm = errors.confusion(labels, preds, k)
    np.testing.assert_array_equal(cm, confusion_matrix(labels, preds, labels=range(k)))
    np.testing.assert_allclose(errors.row_normalize(cm),
                               np.nan_to_num(confusion_matrix(labels, preds, labels=range(k), normalize="true")))


def test_confused_pairs_ranked_and_cells():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    preds = np.array([1, 1, 0, 0, 1, 0, 1, 1, 2, 2])
    cm = errors.confusion(labels, preds, 3)
    pairs = errors.confused_pairs(cm)
    assert [(q.true, q.pred, q.count) for q in pairs] == [(0, 1, 2), (2, 1, 2), (1, 0, 1), (2, 0, 1)]
    assert pairs[0].rate == pytest.approx(2 / 3) and pairs[1].rate == pytest.approx(2 / 5)
    np.testing.assert_array_equal(errors.cell_indices(labels, preds, 2, 1), [6, 7])


@pytest.mark.parametrize("by", list(errors.SORTS))
def test_ranking_filters_and_paging(by):
    probs, losses, labels = _random_eval(n=2000, k=5, seed=3)
    preds = probs.argmax(1)
    order = errors.rank_samples(probs, losses, labels, by)
    wrong = np.flatnonzero(preds != labels)
    assert sorted(order.tolist()) == wrong.tolist()  # exactly the errors
    if by == "loss":
        key = losses[order]
    elif by == "confidence":
        key = probs[order].max(1)
    else:
        p = probs.copy()
        true = p[np.arange(len(labels)), labels].copy()
        p[np.arange(len(labels)), labels] = -1
        key = -(true - p.max(1))[order]
    assert np.all(np.diff(key) <= 1e-12)  # worst first
    sub = errors.rank_samples(probs, losses, labels, by, true_class=2, pred_class=4)
    assert set(sub.tolist()) == set(np.flatnonzero((labels == 2) & (preds == 4)).tolist())
    every = errors.rank_samples(probs, losses, labels, by, only_wrong=False)
    assert len(every) == len(labels)
    if by == "confidence":  # every wrong prediction ranks above every right one
        assert set(every[: len(wrong)].tolist()) == set(wrong.tolist())
    pages = [errors.page_of(order, i, 12) for i in range(errors.num_pages(len(order), 12))]
    np.testing.assert_array_equal(np.concatenate(pages), order)
    np.testing.assert_array_equal(errors.page_of(order, 10_000, 12), pages[-1])  # clipped to the last page


def test_margins_and_topk():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(errors.margins(probs, np.array([0, 1])), [0.5, -0.3])
    idx, p = errors.top_k(probs[1], 5)
    assert idx.tolist() == [2, 1, 0] and p.tolist() == [0.6, 0.3, 0.1]


def test_analyze_and_figures():
    probs, losses, labels = _random_eval(n=300, k=4, seed=5)
    an = errors.analyze(probs, losses, labels, 4)
    assert an.error == pytest.approx(float((probs.argmax(1) != labels).mean()))
    assert set(an.orders) == set(errors.SORTS)
    fig = errors.confusion_figure(an.confusion, list("abcd"), normalized=True)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), errors.row_normalize(an.confusion))
    bars = errors.topk_figure(list("abcd"), probs[0], int(labels[0]), k=3)
    assert len(bars.data[0].x) == 3
