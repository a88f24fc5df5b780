"""Pruning (unstructured, channels, iterative) and per-layer sensitivity, checked against torch.nn.utils.prune."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import compression  # noqa: F401
from compression.pruning import (
    PruneIterativeConfig,
    channel_prune,
    penalty_fn,
    prunable_layers,
)
from compression.registry import CompressContext, apply, config_from_dict
from compression.sensitivity import TRANSFORMS, SensitivityTable, layer_sensitivity, suggest_levels
from compression.variant import make_variant
from nnlab.measure import count_macs
from nnlab.models.registry import create_model, model_hash
from nnlab.workspace import Workspace


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("demo-cnn", 1, 10, (8, 8)).eval()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_layer_masks_equal_torch_prune(sparsity, digits, tmp_path):
    model = _model()
    res = apply(model, config_from_dict({"method": "prune-unstructured", "sparsity": sparsity}),
                CompressContext(data=digits, workdir=tmp_path))
    ref = copy.deepcopy(model)
    ours = dict(res.model.named_modules())
    for name, mod in prunable_layers(ref):
        prune.l1_unstructured(mod, "weight", amount=sparsity)
        mask = mod.weight_mask.bool()
        got = ours[name].weight != 0
        assert torch.equal(got, mask), name
        # and the kept weights are the original values
        assert torch.equal(ours[name].weight[got], mod.weight_orig[mask])
        achieved = 1 - got.float().mean().item()
        assert abs(achieved - sparsity) <= 0.005 + 1 / got.numel(), (name, achieved)


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_global_masks_equal_torch_prune_and_an_independent_threshold(sparsity, digits, tmp_path):
    model = _model(1)
    res = apply(model, config_from_dict({"method": "prune-unstructured", "sparsity": sparsity, "scope": "global"}),
                CompressContext(data=digits, workdir=tmp_path))
    ref = copy.deepcopy(model)
    params = [(m, "weight") for _, m in prunable_layers(ref)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    ours = [m.weight for _, m in prunable_layers(res.model)]
    for (m, _), w in zip(params, ours):
        assert torch.equal(w != 0, m.weight_mask.bool())
    # independent: one threshold = the k-th smallest |w| over all layers
    allw = torch.cat([m.weight.detach().abs().reshape(-1) for _, m in prunable_layers(model)])
    k = round(sparsity * allw.numel())
    thr = allw.sort().values[k - 1]
    kept = torch.cat([(w != 0).reshape(-1) for w in ours])
    assert torch.equal(kept, allw > thr)
    assert abs(1 - kept.float().mean().item() - sparsity) <= 0.005
    # global ≠ per layer: layers end at different sparsities
    per_layer = [1 - (w != 0).float().mean().item() for w in ours]
    assert max(per_layer) - min(per_layer) > 0.05


def test_finetuning_keeps_the_masks(digits, tmp_path):
    model = _model(2)
    res = apply(model, config_from_dict({"method": "prune-unstructured", "sparsity": 0.7, "finetune_epochs": 1}),
                CompressContext(data=digits, workdir=tmp_path))
    for _, m in prunable_layers(res.model):
        assert abs(1 - (m.weight != 0).float().mean().item() - 0.7) <= 0.005 + 1 / m.weight.numel()
    assert res.extra["finetune_history"][0]["train_acc"] > 0.3


@pytest.mark.parametrize("target", ["macs", "params"])
def test_channel_pruning_shrinks_tensors_and_meets_the_target(target, digits, tmp_path):
    model = _model(3)
    res = apply(model, config_from_dict({"method": "prune-channels", "target": target, "amount": 0.5}),
                CompressContext(data=digits, workdir=tmp_path))
    pm = res.model
    assert pm.features[0].out_channels < 32 and pm.features[1].num_features == pm.features[0].out_channels
    assert pm.features[4].in_channels == pm.features[0].out_channels
    assert pm.classifier[-1].out_features == 10, "the output layer must keep its classes"
    assert pm(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    key = "macs" if target == "macs" else "params"
    before, after = res.extra[f"{key}_before"], res.extra[f"{key}_after"]
    assert 0.35 * before <= after <= 0.5 * before, (before, after)
    assert count_macs(pm, (1, 8, 8)) < count_macs(model, (1, 8, 8))


def test_channel_ratio_target_and_the_weakest_filter_goes():
    """A hand-built net: channel 2 is tiny in every coupled tensor, so L1 pruning of one channel removes it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    with torch.no_grad():
        net[0].weight[2].mul_(1e-3)
        net[0].bias[2] = 1e-4
        net[1].weight[2] = 1e-3
        net[3].weight[:, 2].mul_(1e-3)
    keep = [0, 1, 3]
    w0, w3 = net[0].weight.detach().clone(), net[3].weight.detach().clone()
    stats = channel_prune(net, (1, 8, 8), 3, "channels", 0.25, norm="l1", scope="layer")
    assert net[0].weight.shape == (3, 1, 3, 3) and net[1].num_features == 3
    assert torch.equal(net[0].weight, w0[keep])
    # the next conv lost input channel 2 (and one of its own filters): each surviving filter is an original one
    assert net[3].weight.shape == (3, 3, 3, 3)
    originals = [w3[o][keep] for o in range(4)]
    assert all(any(torch.equal(row, ref) for ref in originals) for row in net[3].weight)
    assert net[6].in_features == 3 * 8 * 8 and net[6].out_features == 3
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    assert stats["macs_after"] < stats["macs_before"]


def test_channel_pruned_variant_records_fewer_macs(demo, digits, tmp_path):
    model, record, _ = demo
    rec = make_variant(model, record.id, "demo-cnn", [config_from_dict({"method": "prune-channels", "amount": 0.5})],
                       digits, Workspace(tmp_path / "ws"), latency_repeats=3)
    assert rec.macs <= 0.5 * record.macs and rec.params < record.params
    assert rec.size_bytes < record.size_bytes  # the dense artifact itself is smaller
    conv = next(r for r in rec.layers if r["name"] == "features.4")
    assert conv["channels"] < conv["channels_before"] == 64


def test_iterative_schedule_floor_and_history(demo, digits, tmp_path):
    model = _model(4)
    cfg = PruneIterativeConfig(rounds=3, fraction=0.5, epochs=0, max_drop=1.0)
    res = apply(model, cfg, CompressContext(data=digits, workdir=tmp_path))
    spars = [r["sparsity"] for r in res.extra["rounds"]]
    # s_i = 1 − (1 − p)^i of the pruned weights; BN and biases stay, so total sparsity is slightly lower
    w_total = sum(m.weight.numel() for _, m in prunable_layers(model))
    all_params = sum(p.numel() for p in model.parameters())
    for i, s in enumerate(spars, 1):
        assert s == pytest.approx((1 - 0.5 ** i) * w_total / all_params, abs=0.005)
    assert res.extra["stopped_by"] == "round budget"
    # an impossible floor: round 1 already falls below it, the model before round 1 is kept (no pruning)
    trained = demo[0]
    strict = apply(trained, PruneIterativeConfig(rounds=2, fraction=0.9, epochs=0, max_drop=0.0, scope="layer"),
                   CompressContext(data=digits, workdir=tmp_path / "b"))
    assert "accuracy floor" in strict.extra["stopped_by"] and len(strict.extra["rounds"]) == 1
    assert model_hash(strict.model) == model_hash(trained)
    assert strict.extra["rounds"][0]["val_accuracy"] < strict.extra["start_val_accuracy"]


def test_rewinding_resets_survivors_to_the_early_weights(digits, tmp_path, monkeypatch):
    """Fine-tuning replaced by "add 1 to every weight": with rewinding each round restarts from the
    original values, so after 2 rounds the survivors are original + 1 (without rewinding: + 2)."""
    import compression.pruning as pruning_mod

    def fake_finetune(model, ctx, epochs, lr, masks=None, **kw):
        with torch.no_grad():
            for _, m in prunable_layers(model):
                m.weight.add_(1.0)
        pruning_mod.apply_masks(model, masks)
        return []

    monkeypatch.setattr(pruning_mod, "finetune", fake_finetune)
    model = _model(5)
    for rewind, shift in ((True, 1.0), (False, 2.0)):
        cfg = PruneIterativeConfig(rounds=2, fraction=0.5, epochs=1, max_drop=1.0, rewind=rewind)
        res = apply(model, cfg, CompressContext(data=digits, workdir=tmp_path / str(rewind)))
        for (_, m0), (_, m) in zip(prunable_layers(model), prunable_layers(res.model)):
            kept = m.weight != 0
            assert torch.allclose(m.weight[kept], m0.weight[kept] + shift), (rewind, shift)
        assert res.extra["rounds"][-1]["sparsity"] > 0.7


def test_penalties_equal_hand_computation():
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([3.0, -4.0]).view(2, 1, 1, 1))
        net[2].weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 2.0]]))
    assert penalty_fn("l1", 0.1)(net).item() == pytest.approx(0.1 * (3 + 4 + 1 + 2 + 0 + 2))
    # group: one L2 norm per output filter / row: |3|, |−4|, √5, 2
    assert penalty_fn("group", 0.5)(net).item() == pytest.approx(0.5 * (3 + 4 + 5 ** 0.5 + 2))
    assert penalty_fn("none", 1.0) is None


def test_l1_penalty_makes_more_small_weights(digits, tmp_path):
    model = _model(6)
    base = PruneIterativeConfig(rounds=1, fraction=0.01, epochs=1, max_drop=1.0, lr=3e-3)
    a = apply(model, base, CompressContext(data=digits, workdir=tmp_path / "a")).model
    b = apply(model, base.replace(penalty="l1", penalty_weight=1e-3), CompressContext(data=digits,
                                                                                      workdir=tmp_path / "b")).model
    l1 = [sum(m.weight.abs().sum().item() for _, m in prunable_layers(x)) for x in (a, b)]
    assert l1[1] < 0.9 * l1[0]


# --- sensitivity ------------------------------------------------------------------------------------------

def test_sensitivity_table_and_model_untouched(demo, digits):
    model, _, _ = demo
    before = model_hash(model)
    table = layer_sensitivity(model, digits, "prune", levels=(0.0, 0.5, 0.99), max_samples=300)
    assert model_hash(model) == before
    assert len(table.rows) == 5 * 3 and table.matrix().shape == (5, 3)
    for r in table.rows:
        if r["level"] == 0.0:
            assert r["accuracy"] == table.base_accuracy and r["drop"] == 0
    # 99 % of the biggest layer gone hurts more than 50 %
    drops = {(r["layer"], r["level"]): r["drop"] for r in table.rows}
    assert drops[("classifier.2", 0.99)] >= drops[("classifier.2", 0.5)]
    assert max(r["drop"] for r in table.rows) > 0.05


def test_suggest_levels_picks_the_strongest_within_budget():
    rows = [{"layer": la, "level": lv, "accuracy": 0.9 - d, "drop": d, "params": 10}
            for la, pairs in {"a": [(0.5, 0.0), (0.8, 0.004), (0.9, 0.03)],
                              "b": [(0.5, 0.02), (0.8, 0.05), (0.9, 0.2)]}.items() for lv, d in pairs]
    t = SensitivityTable("prune", 0.9, rows)
    assert suggest_levels(t, 0.01) == {"a": 0.8, "b": None}
    assert suggest_levels(t, 0.1) == {"a": 0.9, "b": 0.8}


def test_quantize_sensitivity_prefers_fewer_bits_within_budget(demo, digits):
    assert "quantize" in TRANSFORMS  # compression.quantization is part of nnlab: missing is a failure, not a skip
    model, _, _ = demo
    table = layer_sensitivity(model, digits, "quantize", levels=(8, 2), layers=["features.4"], max_samples=300)
    drops = {r["level"]: r["drop"] for r in table.rows}
    assert abs(drops[8]) <= 0.01 and drops[2] >= drops[8]
    assert suggest_levels(table, 1.0) == {"features.4": 2}


def test_sensitivity_rejects_unknown_layers(demo, digits):
    with pytest.raises(ValueError, match="no Conv/Linear layer"):
        layer_sensitivity(demo[0], digits, "prune", layers=["nope"])
    assert np.isfinite(layer_sensitivity(demo[0], digits, "prune", levels=(0.3,), layers=["features.0"],
                                         max_samples=100).base_accuracy)


def test_per_layer_sparsities_from_the_sensitivity_table(digits, tmp_path):
    model = _model(7)
    cfg = config_from_dict({"method": "prune-unstructured", "sparsity": 0.2,
                            "per_layer": "features.4=0.9, classifier.2=0.5"})
    res = apply(model, cfg, CompressContext(data=digits, workdir=tmp_path))
    got = {r["name"]: r["weight_sparsity"] for r in res.layers}
    assert got["features.4"] == pytest.approx(0.9, abs=0.005)
    assert got["classifier.2"] == pytest.approx(0.5, abs=0.005)
    assert got["features.0"] == pytest.approx(0.2, abs=0.005)
    for bad in ("features.4=1.5", "features.4", "x=0.5,=0.2"):
        with pytest.raises(ValueError, match="per_layer"):
            config_from_dict({"method": "prune-unstructured", "per_layer": bad})
    with pytest.raises(ValueError, match="no prunable layer"):
        apply(model, cfg.replace(per_layer="nope=0.5"), CompressContext(data=digits, workdir=tmp_path))
