"""Train/test mismatch: the domain classifier on penultimate features, pixel statistics, class shift,
near-duplicates; hooks are removed and the model is left unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from diagnostics import mismatch as M
from nnlab.data.sets import ImageDataset
from nnlab.models.registry import model_hash


def _resplit(d: ImageDataset, train_idx, test_idx, x=None, test_transform=None) -> ImageDataset:
    x = torch.cat([d.x_train, d.x_test]) if x is None else x
    y = torch.cat([d.y_train, d.y_test])
    xt = x[test_idx] if test_transform is None else test_transform(x[test_idx])
    return ImageDataset("resplit", "resplit", "test", d.classes, x[train_idx], y[train_idx], xt, y[test_idx],
                        mean=d.mean, std=d.std)


@pytest.fixture(scope="module")
def model(demo):
    return demo[0]


def test_domain_auc_random_split_vs_shifted_intensity(model, digits):
    n = len(digits.y_train) + len(digits.y_test)
    perm = np.random.default_rng(1).permutation(n)
    tr, te = torch.from_numpy(perm[:1347]), torch.from_numpy(perm[1347:])
    random_split = _resplit(digits, tr, te)
    darker = _resplit(digits, tr, te, test_transform=lambda x: (x.float() * 0.6).round().to(torch.uint8))
    before = model_hash(model)
    aucs = {}
    for name, ds in (("random", random_split), ("darker", darker)):
        f_tr, _ = M.features_and_logits(model, ds, "train")
        f_te, logits = M.features_and_logits(model, ds, "test")
        assert f_tr.shape == (1347, model.classifier[-1].in_features) and logits.shape == (450, 10)
        aucs[name] = M.domain_auc(f_tr, f_te)
    print(f"domain AUC: random split {aucs['random']:.3f}, test intensity x0.6 {aucs['darker']:.3f}")
    assert abs(aucs["random"] - 0.5) < 0.08
    assert aucs["darker"] > 0.8
    assert model_hash(model) == before
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    st = M.pixel_stats(darker)
    assert st.mean_shift[0] < -0.25 and st.hist_distance[0] > 0.1
    st = M.pixel_stats(random_split)
    assert abs(st.mean_shift[0]) < 0.05


def test_features_match_the_head_input_and_hooks_go_after_error(model, digits):
    m = copy.deepcopy(model)
    f, logits = M.features_and_logits(m, digits, "test", indices=np.arange(20))
    with torch.no_grad():
        ref = m.classifier[-1](torch.from_numpy(f))
    np.testing.assert_allclose(ref.numpy(), logits, rtol=1e-4, atol=1e-4)
    bad = copy.copy(digits)
    bad.x_test = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)  # three channels: the first conv fails
    bad.y_test = torch.zeros(4, dtype=torch.long)
    bad.mean, bad.std = (0.3,) * 3, (0.3,) * 3
    with pytest.raises(RuntimeError):
        M.features_and_logits(m, bad, "test")
    assert all(not mod._forward_pre_hooks for mod in m.modules())
    with pytest.raises(ValueError):
        M.last_linear(torch.nn.Conv2d(1, 1, 1))


def test_near_duplicates_found_as_leakage(model, digits):
    x_test = digits.x_test.clone()
    x_test[:15] = digits.x_train[100:115]  # exact copies
    jitter = torch.randint(-3, 4, (5, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    noisy = digits.x_train[200:205].int() + jitter
    x_test[15:20] = noisy.clamp(0, 255).to(torch.uint8)  # near copies
    leaky = ImageDataset("leaky", "leaky", "t", digits.classes, digits.x_train, digits.y_train, x_test, digits.y_test,
                         mean=digits.mean, std=digits.std)
    f_tr, _ = M.features_and_logits(model, leaky, "train")
    f_te, _ = M.features_and_logits(model, leaky, "test")
    dup = M.near_duplicates(leaky, f_tr, f_te)
    found = dict(zip(dup.test_index.tolist(), dup.train_index.tolist()))
    for i in range(15):
        assert found.get(i) == 100 + i
    for i in range(15, 20):
        assert found.get(i) == 200 + i - 15
    assert len(found) <= 22  # few look-alikes besides the planted copies
    clean = M.near_duplicates(digits, f_tr, M.features_and_logits(model, digits, "test")[0])
    assert len(clean.test_index) <= 2


def test_class_shift_and_imbalance():
    same = M.class_shift(np.array([100, 100, 100]), np.array([50, 50, 50]))
    assert same.tv_distance == pytest.approx(0.0) and same.chi2_p > 0.99
    shifted = M.class_shift(np.array([100, 100, 100]), np.array([90, 30, 30]))
    assert shifted.tv_distance == pytest.approx(0.6 - 1 / 3)
    assert shifted.chi2_p < 1e-6
    assert M.imbalance_ratio(np.array([10, 50, 20])) == 5.0
    assert M.imbalance_ratio(np.array([0, 5])) == float("inf")
