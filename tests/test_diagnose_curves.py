"""Learning curves: one point per fraction, nested stratified subsets, workspace caching, slopes."""

from __future__ import annotations

import numpy as np
import pytest

from diagnostics import curves as C
from nnlab.models.registry import create_model
from nnlab.train import TrainConfig
from nnlab.workspace import Workspace


def test_nested_stratified_subsets():
    y = np.repeat(np.arange(4), [40, 20, 20, 8])
    subs = C.nested_subsets(y, [0.1, 0.25, 0.5, 1.0], seed=3)
    assert [len(s) for s in subs] == [9, 22, 44, 88]
    for a, b in zip(subs, subs[1:]):
        assert set(a) <= set(b)
    assert set(np.unique(y[subs[0]])) == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        C.nested_subsets(y, [0.0])


def test_curve_has_one_point_per_fraction_and_is_cached(tiny_data, tmp_path):
    ws = Workspace(tmp_path)
    c, h, w = tiny_data.input_shape
    calls: list[float] = []
    key = C.cache_key("demo-cnn-small-tiny", tiny_data.id, [0.25, 0.5, 1.0], 2)
    points, cached = C.cached_learning_curve(
        ws, key, lambda: create_model("demo-cnn-small", c, 3, (h, w)), tiny_data, [0.25, 0.5, 1.0],
        TrainConfig(epochs=2, batch_size=4), progress=lambda f, m: calls.append(f))
    assert not cached
    assert [p.fraction for p in points] == [0.25, 0.5, 1.0]
    assert [p.n_train for p in points] == [15, 30, 60]
    assert all(0 <= p.train_error <= 1 and 0 <= p.test_error <= 1 and len(p.history) == 2 for p in points)
    assert calls and calls[-1] == 1.0 and all(b >= a - 1e-9 for a, b in zip(calls, calls[1:]))
    again, cached = C.cached_learning_curve(ws, key, lambda: pytest.fail("retrained"), tiny_data, [0.25, 0.5, 1.0])
    assert cached and again == points
    assert C.cached_curves(ws, "demo-cnn-small-tiny", tiny_data.id)[0][0] == key


def test_slopes():
    pts = [C.CurvePoint(0.5, 500, 0.0, 0.12, 1.0), C.CurvePoint(1.0, 1000, 0.0, 0.10, 1.0)]
    assert C.error_slope(pts) == pytest.approx(-0.02)
    pts = [C.CurvePoint(0.25, 250, 0.0, 0.2, 1.0), C.CurvePoint(1.0, 1000, 0.0, 0.1, 1.0)]
    assert C.error_slope(pts) == pytest.approx(-0.05)  # two doublings
    assert C.error_slope(pts[:1]) is None
    hist = [{"train_loss": v} for v in (1.0, 0.5, 0.4, 0.2)]
    assert C.history_trend(hist, "train_loss") == pytest.approx(-0.15)
    assert C.history_trend(hist[:2], "train_loss") is None
    assert C.cache_key("a/b", "c d", [0.1, 1.0], 3) == "curve_a_b_c_d_f10-100_e3_s0"
