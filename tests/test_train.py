"""The training loop: it learns, reports progress, cancels, and copes with tiny subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nnlab.jobs.kinds  # noqa: F401 - registers the foundation's job kinds
from nnlab.models.registry import create_model
from nnlab.train import Cancelled, Progress, TrainConfig, quick_eval, train_model  # noqa: F401


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


def test_augment_flips_and_crops_each_sample_as_drawn():
    """Random flips and reflection-padded crops equal a per-sample reference drawn from the same generator."""
    from nnlab.train import TrainConfig, augment

    x = torch.arange(3 * 2 * 6 * 6, dtype=torch.float32).view(3, 2, 6, 6)
    out = augment(x, TrainConfig(flip=True, crop=0.34), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    flip = torch.rand(3, generator=g) < 0.5
    xf = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    pad = torch.nn.functional.pad(xf, (2, 2, 2, 2), mode="reflect")
    dy, dx = torch.randint(0, 5, (3,), generator=g), torch.randint(0, 5, (3,), generator=g)
    ref = torch.stack([pad[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 6] for i in range(3)])
    assert torch.equal(out, ref)
    assert not torch.equal(out, x)


@pytest.mark.parametrize("bad", [{"optimizer": "lbfgs"}, {"schedule": "step"}, {"crop": 0.9},
                                 {"label_smoothing": 1.0}, {"weight_decay": -1.0}])
def test_train_config_refuses_bad_settings(bad):
    from nnlab.train import TrainConfig

    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_training_is_reproducible_without_the_global_rng(tiny_data):
    """Same seed, same weights after training (dropout and init from the run's own generators), whatever the
    global RNG does meanwhile."""
    from nnlab.models.randinit import seeded_init
    from nnlab.models.registry import DemoCNN
    from nnlab.train import TrainConfig

    cfg = TrainConfig(epochs=2, lr=3e-3, batch_size=16, flip=True, crop=0.125, eval_test=False, seed=5)

    def run() -> dict:
        m = seeded_init(DemoCNN(1, 3, (8, 8), width=4, hidden=8), 11)
        torch.rand(7)  # disturb the global generator between the runs
        train_model(m, tiny_data, cfg, device=torch.device("cpu"))
        return m.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_model_job_stores_a_selectable_model(demo, digits):
    from nnlab.jobs import manager as jobs
    from nnlab.jobs import refs
    from nnlab.jobs.kinds import trained_model_id

    init, config = {"kind": "scratch"}, {"epochs": 2, "lr": 3e-3, "batch_size": 64, "flip": False}
    mid = trained_model_id("demo-cnn-small", digits.id, init, config)
    job = jobs.submit("train-model", {"data": refs.data_ref("digits"), "arch": "demo-cnn-small", "init": init,
                                      "config": config, "model_id": mid, "name": ""})
    assert job.wait(300) and job.status == jobs.DONE, job.error
    model, rec = refs.load_model(mid)
    assert rec.extra["trained_by"] == "nnlab-train" and rec.arch == "demo-cnn-small"
    assert len(job.result["history"]) == 2 and rec.accuracy > 0.5  # two epochs learn digits well past chance
    from nnlab.evaluate import evaluate

    assert evaluate(model, digits, "test").accuracy == pytest.approx(rec.accuracy)
