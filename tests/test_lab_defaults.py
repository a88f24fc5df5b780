"""The compression lab's defaults: every method's first click keeps the accuracy the page promises (through the
lab page and its variant job, on the digits demo), and the sensitivity panel fills per-layer levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compression
import compression.tasks
from compression import defaults, sensitivity
from compression.pruning import parse_levels
from compression.quantization import parse_bits
from compression.registry import config_from_dict, get_method, list_methods
from nnlab.jobs import manager as jobs
from nnlab.workspace import Workspace
from tests.conftest import app_test

LAB = "pages/compress_lab.py"
LAYERS = ["features.0", "features.4", "features.8", "classifier.2", "classifier.5"]


def _captions(at) -> list[str]:
    return [c.value for c in at.caption]


# --- first click ------------------------------------------------------------------------------------------------

def test_every_registered_method_has_a_first_click_promise():
    missing = [c.method for c in list_methods() if c.method not in defaults.FIRST_CLICK]
    assert not missing, f"add a first-click default and promise to compression/defaults.py for {missing}"
    for c in list_methods():
        fc = defaults.first_click(c.method)
        assert 0 < fc.max_drop <= 0.05 and len(fc.why) > 40
        defaults.default_config(c.method)  # the overrides build a valid config
        defaults.default_config(c.method, n_train=1347)


def test_small_datasets_get_more_distillation_epochs():
    assert defaults.overrides("distill", 60000) == {"epochs": 3}
    assert defaults.overrides("distill", 1347) == {"epochs": 30}  # ceil(40,000 / 1,347) capped at 30
    assert defaults.overrides("prune-unstructured", 1347) == {"scope": "global"}


@pytest.mark.parametrize("method", [pytest.param(c.method, marks=pytest.mark.slow) if c.method == "distill"
                                    else c.method for c in list_methods()])  # distillation trains: the slow one
def test_first_click_keeps_the_promised_accuracy(method, demo, digits):
    """Select the method in the lab, read its promise, press Run with the defaults, compare the variant."""
    _, base, _ = demo
    fc = defaults.first_click(method)
    at = app_test(LAB).run()
    at.selectbox(key="lab_method").set_value(method).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert defaults.promise(method) in _captions(at)
    wanted = defaults.default_config(method, len(digits.y_train)).to_dict()
    for name, value in defaults.overrides(method, len(digits.y_train)).items():
        widget = next(w for w in at.main if getattr(w, "key", None) == f"lab_{method}_{name}")
        assert widget.value == value, name
    at.button(key="lab_run").click().run()
    job = jobs.wait(at.session_state["lab_jobs"][-1], 900)
    assert job.status == jobs.DONE, job.error
    assert job.params["configs"] == [wanted]  # the lab ran exactly the first-click config
    rec = Workspace().load_variant(job.result["variant_id"])
    drop = base.accuracy - rec.accuracy
    assert drop <= fc.max_drop + 1e-9, f"{method}: {base.accuracy:.4f} -> {rec.accuracy:.4f}"


# --- sensitivity panel ------------------------------------------------------------------------------------------

# drop per layer, weakest level first: features.0 copes with little, features.4 and classifier.2 with anything,
# features.8 with most, classifier.5 with nothing (no level within its share of the budget).
PROFILE = {"features.0": [0, 0.001, 0.004, 0.03, 0.1, 0.2], "features.4": [0.0] * 6,
           "features.8": [0, 0, 0, 0.001, 0.002, 0.05], "classifier.2": [0, 0, 0, 0, 0, 0.001],
           "classifier.5": [0.05] * 6}


def _table(kind: str) -> sensitivity.SensitivityTable:
    levels = sensitivity.DEFAULT_LEVELS[kind]
    rows = [{"layer": la, "level": lv, "accuracy": 0.9 - d, "drop": d, "params": 100}
            for la in LAYERS for lv, d in zip(levels, PROFILE[la])]
    return sensitivity.SensitivityTable(kind, 0.9, rows)


@pytest.fixture()
def saved_table(demo):
    """A hand-made sensitivity table stored where the lab looks for the demo model's analysis (removed after)."""
    ws, made = Workspace(), []

    def save(kind: str) -> sensitivity.SensitivityTable:
        table = _table(kind)
        key = compression.tasks.sensitivity_key(demo[1].id, kind, 500)
        ws.save_run(key, table.to_dict())
        made.append(key)
        return table

    yield save
    for key in made:
        ws.run_path(key).unlink(missing_ok=True)


def test_suggested_config_lists_every_layer_and_leaves_unsafe_ones_untouched():
    table = _table("prune")
    sug = sensitivity.suggest_levels(table, 0.01)  # 0.2 points per layer
    assert sug == {"features.0": 0.5, "features.4": 0.95, "features.8": 0.9, "classifier.2": 0.95,
                   "classifier.5": None}
    cfg = sensitivity.suggested_config(table, sug)
    assert cfg["per_layer"] == "features.0=0.5,features.4=0.95,features.8=0.9,classifier.2=0.95,classifier.5=0"
    assert cfg["scope"] == "layer" and cfg["sparsity"] == 0.0
    config_from_dict(cfg)  # valid
    q = _table("quantize")
    qcfg = sensitivity.suggested_config(q, sensitivity.suggest_levels(q, 0.01))
    assert qcfg["per_layer"] == "features.0=6,features.4=2,features.8=2,classifier.2=2,classifier.5=32"
    config_from_dict(qcfg)


@pytest.mark.parametrize("kind", ["prune", "quantize"])
def test_sensitivity_panel_fills_the_per_layer_field(kind, saved_table, demo):
    table = saved_table(kind)
    at = app_test(LAB).run()
    if kind != "prune":
        at.radio(key="lab_sens_kind").set_value(kind).run()
    at.number_input(key="lab_sens_budget").set_value(1.0).run()
    assert not at.exception, at.exception
    sug = sensitivity.suggest_levels(table, 0.01)
    assert any("classifier.5 stays within its share" in c and "left untouched" in c for c in _captions(at))
    at.button(key="lab_sens_apply").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    method = "prune-unstructured" if kind == "prune" else "quantize-weights"
    assert at.session_state["lab_method"] == method
    text = at.text_input(key=f"lab_{method}_per_layer").value
    if kind == "prune":
        assert parse_levels(text) == {k: (0.0 if v is None else v) for k, v in sug.items()}
        assert at.number_input(key=f"lab_{method}_sparsity").value == 0.0
        assert at.selectbox(key=f"lab_{method}_scope").value == "layer"
    else:
        assert parse_bits(text) == {k: (32 if v is None else int(v)) for k, v in sug.items()}


def test_suggested_pruning_runs_with_each_layers_own_sparsity(saved_table, demo):
    """Apply the suggestion, press Run: each layer of the variant has its suggested sparsity, classifier.5 none."""
    table = saved_table("prune")
    at = app_test(LAB).run()
    at.button(key="lab_sens_apply").click().run()
    at.button(key="lab_run").click().run()
    job = jobs.wait(at.session_state["lab_jobs"][-1], 300)
    assert job.status == jobs.DONE, job.error
    from compression.variant import load_variant_model

    model = load_variant_model(Workspace(), Workspace().load_variant(job.result["variant_id"]))
    mods = dict(model.named_modules())
    for layer, level in sensitivity.suggest_levels(table, 0.01).items():
        w = mods[layer].weight
        assert float((w == 0).float().mean()) == pytest.approx(level or 0.0, abs=0.01), layer


def test_quantize_weights_per_layer_bits(demo, digits, tmp_path):
    from compression.registry import CompressContext, apply

    model = demo[0]
    cfg = get_method("quantize-weights").from_dict({"bits": 8, "per_layer": "features.4=2,classifier.5=32"})
    res = apply(model, cfg, CompressContext(data=digits, workdir=tmp_path))
    rows = {r["name"]: r for r in res.layers}
    assert rows["features.4"]["bits"] == 2 and rows["classifier.5"]["bits"] == 32
    assert rows["features.0"]["bits"] == 8
    mods, orig = dict(res.model.named_modules()), dict(model.named_modules())
    assert torch.equal(mods["classifier.5"].weight, orig["classifier.5"].weight)  # left in float32
    w = mods["features.4"].weight.detach()
    assert max(len(torch.unique(w[c])) for c in range(w.shape[0])) <= 4  # 2 bits: at most 4 values per channel
    with pytest.raises(ValueError, match="per_layer"):
        get_method("quantize-weights").from_dict({"per_layer": "features.4=9"})
    with pytest.raises(ValueError, match="no Conv/Linear layer"):
        apply(model, get_method("quantize-weights").from_dict({"per_layer": "nope=4"}),
              CompressContext(data=digits, workdir=tmp_path / "b"))
    assert np.isfinite(rows["features.4"]["max_abs_error"])
