"""Diagnosing a variant against its base (issue 21): per-layer error, one layer put back, flips, PIEs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics import variantdiff as vd
from diagnostics.hooks import hook_count


def _net(w1: float) -> nn.Module:
    """fc1 (w1·I) → ReLU → fc2 ([1, 1]): exact outputs by hand."""
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(2, 2, bias=False))
    net.add_module("act", nn.ReLU())
    net.add_module("fc2", nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net.fc1.weight.copy_(w1 * torch.eye(2))
        net.fc2.weight.copy_(torch.tensor([[1.0, 1.0]]))
    return net.eval()


def test_layer_errors_equal_the_hand_computed_values():
    base, variant = _net(1.0), _net(0.5)
    x = torch.tensor([[1.0, 2.0]])
    rows = {r.name: r for r in vd.layer_errors(base, variant, x)}
    assert [r.name for r in vd.layer_errors(base, variant, x)] == ["fc1", "fc2"]  # forward order
    # fc1: variant 0.5·[1, 2] against [1, 2]: relative error 0.5, SQNR 10·log10(5 / 1.25) = 6.0206 dB
    assert rows["fc1"].local_rel == pytest.approx(0.5) and rows["fc1"].accumulated_rel == pytest.approx(0.5)
    assert rows["fc1"].local_sqnr_db == pytest.approx(10 * np.log10(4.0))
    # fc2 is the same in both: no error of its own (fed the base's [1, 2]), but it carries fc1's: 1.5 vs 3
    assert rows["fc2"].local_rel == 0.0 and rows["fc2"].local_sqnr_db == float("inf")
    assert rows["fc2"].accumulated_rel == pytest.approx(0.5)
    assert hook_count(base) == 0 and hook_count(variant) == 0  # nothing left on the caller's models


def test_one_layer_put_back_equals_a_variant_built_with_that_layer_excluded():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    variant = copy.deepcopy(base)
    with torch.no_grad():  # "compress" both layers: weights rounded to a coarse grid
        for m in variant:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.round(m.weight * 2) / 2)
    excluded = copy.deepcopy(base)  # the same compression with layer "0" left out
    with torch.no_grad():
        excluded[2].weight.copy_(torch.round(excluded[2].weight * 2) / 2)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    y = base(x).argmax(1).numpy()
    restored = vd.put_back(base, variant, ["0"])
    assert torch.equal(restored(x), excluded(x))
    before = [p.clone() for p in variant.parameters()]
    acc_b, acc_v, ranking = vd.recovery(base, variant, x, y, [["0"], ["2"], ["0", "2"]])
    assert all(torch.equal(a, b) for a, b in zip(before, variant.parameters()))  # the variant is unchanged
    assert acc_b == 1.0 and ranking[0].layers == ["0", "2"] and ranking[0].accuracy == 1.0
    assert ranking[0].agreement == 1.0 and ranking[0].recovered == pytest.approx(1.0 if acc_v < 1 else float("nan"),
                                                                                nan_ok=True)
    one = next(r for r in ranking if r.layers == ["0"])
    assert one.accuracy == float((excluded(x).argmax(1).numpy() == y).mean())


def test_flip_counts_equal_a_direct_comparison():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    pb = np.where(rng.random(500) < 0.9, y, rng.integers(0, 4, 500))
    pv = np.where(rng.random(500) < 0.85, pb, rng.integers(0, 4, 500))
    f = vd.flips(pb, pv, y, 4)
    changed = pb != pv
    assert f.changed == int(changed.sum()) and np.array_equal(f.indices, np.flatnonzero(changed))
    assert f.right_to_wrong == int((changed & (pb == y) & (pv != y)).sum())
    assert f.wrong_to_right == int((changed & (pb != y) & (pv == y)).sum())
    assert f.right_to_wrong + f.wrong_to_right + f.wrong_to_wrong == f.changed
    assert f.matrix.sum() == f.changed and np.trace(f.matrix) == 0
    assert f.matrix[1, 2] == int(((pb == 1) & (pv == 2)).sum())
    # flips happen with equal accuracy too: swap one right→wrong with one wrong→right
    assert vd.flips([0, 1], [1, 1], [0, 0], 2).changed == 1


def test_pies_on_a_synthetic_population_equal_the_definition():
    # 6 samples, 3 variants: the modal variant prediction differs from the base on samples 1 and 4
    base = np.array([0, 1, 2, 0, 1, 2])
    variants = np.array([[0, 2, 2, 0, 0, 2],
                         [0, 2, 2, 1, 0, 1],
                         [0, 1, 2, 0, 2, 2]])
    y = np.array([0, 1, 2, 0, 0, 1])
    suspected = np.array([False, True, False, False, True, False])
    conf = np.array([0.9, 0.4, 0.9, 0.8, 0.3, 0.9])
    out = vd.forgotten(base, variants, y, 3, suspected=suspected, base_confidence=conf)
    assert np.array_equal(out["mask"], [False, True, False, False, True, False]) and out["count"] == 2
    assert out["pie_rate_suspected"] == 1.0 and out["suspected_among_pies"] == 1.0
    assert out["pie_rate_low_confidence"] == 1.0 and out["pie_rate"] == pytest.approx(2 / 6)
    assert out["base_accuracy_pie"] == 0.5 and out["base_accuracy_rest"] == 0.75
    assert np.array_equal(vd.modal(np.array([[0, 1], [1, 0]]), 2), [0, 0])  # ties go to the lower class


def test_the_page_shows_layer_errors_recovery_flips_and_pies(demo, digits):
    from compression.registry import config_from_dict
    from compression.variant import make_variant
    from nnlab.workspace import Workspace
    from tests.conftest import app_test

    model, base, _ = demo
    ws = Workspace()
    pruned = make_variant(model, base.id, base.arch,
                          [config_from_dict({"method": "prune-unstructured", "sparsity": 0.8})], digits, ws)
    make_variant(model, base.id, base.arch, [config_from_dict({"method": "prune-unstructured", "sparsity": 0.6})],
                 digits, ws)
    at = app_test("pages/compress_diagnose.py", timeout=300)
    at.session_state["compare_ids"] = [pruned.id]
    at.run()
    assert not at.exception, at.exception
    errors = next(d.value for d in at.dataframe if "local_rel" in d.value.columns)
    assert len(errors) >= 2 and list(errors["depth"]) == list(range(len(errors)))
    assert (errors["local_rel"] > 0).any()  # 80 % of the weights are gone: every pruned layer has an error
    recovery = next(d.value for d in at.dataframe if "recovered" in d.value.columns)
    assert len(recovery) == min(5, len(errors)) and recovery["accuracy"].is_monotonic_decreasing
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Changed predictions"]) >= int(metrics["Right → wrong"]) + int(metrics["Wrong → right"])
    assert "PIEs" in metrics
    if int(metrics["Changed predictions"]):  # base and variant attributions of the flipped samples, side by side
        at.button(key="diag_attr_run").click().run()
        assert not at.exception, at.exception
        rhos = [m.value for m in at.metric if m.label == "ρ base vs variant"]
        assert 0 < len(rhos) <= 6


def test_repair_puts_layers_back_until_within_budget_and_stores_a_measured_variant(demo, digits):
    from compression.registry import config_from_dict
    import diagnostics.tasks  # noqa: F401 - registers the job kinds
    from compression.variant import make_variant
    from nnlab.jobs import manager as jobs
    from nnlab.jobs.refs import data_ref
    from nnlab.measure import comparable
    from nnlab.workspace import Workspace

    model, base, _ = demo
    ws = Workspace()
    v = make_variant(model, base.id, base.arch, [config_from_dict({"method": "prune-unstructured", "sparsity": 0.9})],
                     digits, ws)
    job = jobs.submit("variant-repair", {"model_id": base.id, "data": data_ref("digits"), "variant_id": v.id,
                                         "budget": 0.005, "samples": 450})
    jobs.wait(job.key, 300)
    assert job.status == jobs.DONE, job.error
    new = ws.load_variant(job.result["variant_id"])
    layers = new.extra["restored_layers"]
    assert new.parent == base.id and new.config["layers"] == layers and new.config["from_variant"] == v.id
    assert base.accuracy - new.extra["repair_accuracy"] <= 0.005 + 1e-9  # within the budget on its samples
    assert base.accuracy - v.accuracy > 0.02 and layers  # 90 % of the weights gone: a real drop, layers went back
    assert len(layers) < len([r for r in v.layers if r.get("type") in ("Conv2d", "Linear")])  # not all of them
    assert new.accuracy >= v.accuracy and comparable(new) and new.size_gzip_bytes > 0


def test_attribution_pairs_compare_the_same_target_by_rank_correlation(demo, digits):
    from scipy.stats import spearmanr

    model, _, _ = demo
    x, _ = digits.tensors("test", np.arange(3))
    targets = model(x).argmax(1).tolist()
    same = vd.attribution_pairs(model, model, x, targets, "integrated_gradients")
    assert all(p["similarity"] == pytest.approx(1.0) for p in same)  # a model against itself
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    pairs = vd.attribution_pairs(model, noisy, x, targets, "integrated_gradients")
    for p in pairs:  # scipy as the referee
        want = spearmanr(np.abs(p["base"]).sum(0).ravel(), np.abs(p["variant"]).sum(0).ravel()).statistic
        assert p["similarity"] == pytest.approx(want) and p["similarity"] < 0.999
