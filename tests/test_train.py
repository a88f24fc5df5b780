"""The training loop: it learns, reports progress, cancels, and copes with tiny subsets."""

from __future__ import annotations

import numpy as np
import pytest

from nnlab.models import create_model
from nnlab.train import Cancelled, Progress, TrainConfig, quick_eval, train_model


def test_learns_and_reports(tiny_data):
    model = create_model("demo-cnn-small", 1, 3, (8, 8))
    seen: list[Progress] = []
    hist = train_model(model, tiny_data, TrainConfig(epochs=8, lr=1e-2, batch_size=8), progress=seen.append)
    assert [h.epoch for h in hist] == list(range(1, 9))
    assert hist[-1].train_acc >= 0.9 and hist[-1].test_acc >= 0.9
    assert quick_eval(model, tiny_data, "test")[1] == pytest.approx(hist[-1].test_acc)
    assert seen and seen[-1].fraction == pytest.approx(1.0) and "epoch 8/8" in seen[-1].message


@pytest.mark.parametrize("n, batch, epochs", [(1, 16, 1), (15, 16, 2), (5, 2, 1)])
def test_tiny_subsets_train_without_error(tiny_data, n, batch, epochs):
    model = create_model("demo-cnn-small", 1, 3, (8, 8))
    hist = train_model(model, tiny_data, TrainConfig(epochs=epochs, batch_size=batch), indices=np.arange(n))
    assert len(hist) == epochs and np.isfinite(hist[-1].train_loss)


def test_cancel_stops_between_batches(tiny_data):
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        train_model(create_model("demo-cnn-small", 1, 3, (8, 8)), tiny_data, TrainConfig(epochs=5, batch_size=4),
                    cancel=cancel)
    assert calls["n"] == 4


def test_config_validation():
    for bad in (dict(epochs=0), dict(lr=0.0), dict(batch_size=0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
