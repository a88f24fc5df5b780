"""The Compress pages through AppTest: lab runs (pruning, int8, pipeline, cancel), variants persisted,
renamed and deleted; the Pareto page's lists and frontier; the comparison's changed-prediction count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compression.tasks  # noqa: F401
from compression.pareto import frontier_ids, pareto_mask
from compression.variant import load_variant_model
from nnlab.evaluate import evaluate
from nnlab.jobs import manager as jobs
from nnlab.records import Record
from nnlab.workspace import Workspace
from tests.conftest import app_test

LAB, PARETO, COMPARE = "pages/compress_lab.py", "pages/compress_pareto.py", "pages/compress_compare.py"


def run_from_lab(at, method: str, values: dict | None = None):
    """Pick a method, set its parameters, press Run, wait for the background job, rerun; returns the job."""
    at.selectbox(key="lab_method").set_value(method)
    at.run()
    for name, v in (values or {}).items():
        at.number_input(key=f"lab_{method}_{name}").set_value(v)
    n = len(at.session_state["lab_jobs"]) if "lab_jobs" in at.session_state else 0
    at.button(key="lab_run").click()
    at.run()
    assert not at.exception, at.exception
    ids = at.session_state["lab_jobs"]
    assert len(ids) == n + 1
    job = jobs.wait(ids[-1], 240)
    at.run()
    assert not at.exception, at.exception
    return job


@pytest.fixture(scope="module")
def lab(demo):
    """The lab page after a 50 % pruning and an int8 quantization run from it."""
    at = app_test(LAB)
    at.run()
    assert not at.exception, at.exception
    prune = run_from_lab(at, "prune-unstructured", {"sparsity": 0.5})
    int8 = run_from_lab(at, "int8")
    assert prune.status == jobs.DONE, prune.error
    assert int8.status == jobs.DONE, int8.error
    return at, variant_of(prune), variant_of(int8)


def variant_of(job) -> Record:
    """The variant record a finished lab job stored."""
    rec = Workspace().load_variant(job.result["variant_id"])
    assert rec is not None
    return rec


def table_with(at, column: str):
    """The first dataframe shown with ``column`` (AppTest does not expose a dataframe's key)."""
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with a {column!r} column")


def conv_linear_weight_sparsity(model: torch.nn.Module) -> float:
    ws = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


def test_lab_prune_50_gives_variant_with_half_sparsity_and_its_accuracy(lab, demo, digits):
    at, rec, _ = lab
    model, base, _ = demo
    assert rec.method == "prune-unstructured" and rec.parent == base.id
    vm = load_variant_model(Workspace(), rec)
    assert abs(conv_linear_weight_sparsity(vm) - 0.50) <= 0.005
    assert rec.accuracy == pytest.approx(evaluate(vm, digits, "test").accuracy)
    assert rec.accuracy > 0.9
    assert conv_linear_weight_sparsity(model) < 0.01  # the shared demo model was not pruned in place
    table = table_with(at, "× smaller").set_index("id")
    assert table.loc[rec.id, "accuracy"] == pytest.approx(rec.accuracy)
    assert table.loc[rec.id, "weight sparsity"] == pytest.approx(0.5, abs=0.005)
    assert any(f"{rec.accuracy:.2%}" in s.value for s in at.success)


def test_lab_int8_is_about_four_times_smaller(lab, demo):
    at, _, rec = lab
    _, base, _ = demo
    # the default backend is the fastest measured here: ONNX Runtime (one .onnx) or OpenVINO (IR .xml + .bin)
    assert rec.artifact_format in ("onnx-int8", "openvino-ir-int8")
    ratio = base.size_bytes / rec.size_bytes
    assert 3.0 <= ratio <= 4.5, ratio  # int8 weights (4×) plus the graph's own bytes
    files = [Workspace().root / rec.artifact]
    if rec.artifact_format == "openvino-ir-int8":
        files.append(files[0].with_suffix(".bin"))
    assert sum(f.stat().st_size for f in files) == rec.size_bytes
    assert rec.extra["backend"] == rec.extra["runtime_choice"]["choice"]
    assert any("chosen by measurement" in s.value and rec.extra["backend"] in s.value for s in at.success)
    table = table_with(at, "× smaller").set_index("id")
    assert table.loc[rec.id, "× smaller"] == pytest.approx(ratio)
    assert abs(rec.accuracy - base.accuracy) <= 0.02


def test_variants_persist_across_workspace_objects_and_sessions(lab):
    _, prune, int8 = lab
    again = {r.id: r for r in Workspace().list_variants()}
    assert again[prune.id].to_dict() == prune.to_dict()
    assert again[int8.id].to_dict() == int8.to_dict()
    fresh = app_test(LAB)  # a new browser session: no jobs of its own, same list
    fresh.run()
    assert not fresh.exception
    assert {prune.id, int8.id} <= set(table_with(fresh, "× smaller")["id"])


def test_pareto_page_lists_base_and_both_variants(lab, demo):
    _, prune, int8 = lab
    _, base, _ = demo
    at = app_test(PARETO)
    at.run()
    assert not at.exception, at.exception
    table = table_with(at, "frontier")
    assert {base.id, prune.id, int8.id} <= set(table["id"])
    records = [base, *[r for r in Workspace().list_variants() if r.parent == base.id]]
    assert set(table.loc[table["frontier"], "id"]) == frontier_ids(records, "size")
    assert not at.error
    # colour by runtime: the table names each record's runtime, the int8 variant's is its int8 runtime
    at.radio(key="pareto_color_by").set_value("runtime").run()
    assert not at.exception, at.exception
    runtimes = table_with(at, "frontier").set_index("id")["runtime"]
    assert runtimes[int8.id] == int8.latency["1"]["runtime"] and "int8" in runtimes[int8.id]
    assert runtimes[base.id] == base.latency["1"]["runtime"] and base.latency["1"]["runtime"] in base.latencies
    assert {"pytorch-eager-fp32-cpu", "onnxruntime-fp32-cpu", "openvino-fp32-cpu"} <= set(base.latencies)


def test_pareto_page_marks_the_frontier_of_constructed_records(lab, demo):
    _, base, _ = demo
    ws = Workspace()

    def fake(i: str, acc: float, size: int) -> Record:
        return Record(id=i, name=i, method="constructed", parent=base.id, dataset=base.dataset, arch=base.arch,
                      accuracy=acc, size_bytes=size, macs=base.macs, params=10, nonzero_params=10,
                      latency={"1": {"median_ms": 1.0}}, created=1e12)

    made = [fake("t-best", 1.0, 1000), fake("t-tiny", 0.5, 10), fake("t-worse", 0.5, 2000),
            fake("t-mid", 0.9, 5000)]
    try:
        for r in made:
            ws.save_variant(r)
        at = app_test(PARETO)
        at.run()
        assert not at.exception, at.exception
        table = table_with(at, "frontier")
        assert set(table.loc[table["frontier"], "id"]) == {"t-best", "t-tiny"}  # they dominate every real one
        assert not table.set_index("id").loc[["t-worse", "t-mid", base.id], "frontier"].any()
    finally:
        for r in made:
            ws.delete_variant(r.id)


def test_comparison_changed_count_equals_direct_computation(lab, demo, digits):
    _, prune, _ = lab
    model, base, _ = demo
    at = app_test(COMPARE)
    at.session_state["compare_ids"] = [base.id, prune.id]
    at.run()
    assert not at.exception, at.exception
    vm = load_variant_model(Workspace(), prune)
    x = digits.tensors("test")[0]
    with torch.no_grad():
        direct = int((model(x).argmax(1) != vm(x).argmax(1)).sum())
    metric = next(m for m in at.metric if m.label.startswith("Changed predictions"))
    assert int(metric.value) == direct
    table = table_with(at, "changed predictions").set_index("id")
    assert table.loc[prune.id, "changed predictions"] == direct
    assert table.loc[prune.id, "agreement with ref"] == pytest.approx(1 - direct / len(digits.y_test))
    assert any(str(direct) in c.value for c in at.caption if "change their predicted class" in c.value)


def test_comparison_with_int8_variant_runs(lab, demo):
    _, prune, int8 = lab
    _, base, _ = demo
    at = app_test(COMPARE)
    at.session_state["compare_ids"] = [base.id, int8.id, prune.id]
    at.run()
    assert not at.exception, at.exception
    assert len([m for m in at.metric if m.label.startswith("Changed predictions")]) == 2
    assert any("ONNX Runtime" in c.value for c in at.caption)


def test_pipeline_editor_add_reorder_remove_and_run(lab):
    at = lab[0]
    at.radio(key="lab_mode").set_value("Pipeline").run()
    at.selectbox(key="lab_method").set_value("quantize-weights").run()
    at.button(key="lab_add").click().run()
    at.selectbox(key="lab_method").set_value("prune-unstructured").run()
    at.number_input(key="lab_prune-unstructured_sparsity").set_value(0.3).run()
    at.button(key="lab_add").click().run()
    at.button(key="lab_add").click().run()
    assert [s["method"] for s in at.session_state["lab_steps"]] == ["quantize-weights", "prune-unstructured",
                                                                    "prune-unstructured"]
    at.button(key="lab_rm_2").click().run()
    at.button(key="lab_up_1").click().run()
    assert [s["method"] for s in at.session_state["lab_steps"]] == ["prune-unstructured", "quantize-weights"]
    at.button(key="lab_run_pipeline").click().run()
    job = jobs.wait(at.session_state["lab_jobs"][-1], 240)
    at.run()
    assert job.status == jobs.DONE, job.error
    rec = variant_of(job)
    assert rec.method == "prune-unstructured+quantize-weights"
    assert [s["method"] for s in rec.config["steps"]] == ["prune-unstructured", "quantize-weights"]
    assert rec.id in set(table_with(at, "× smaller")["id"])
    at.radio(key="lab_mode").set_value("One method").run()
    # deleting the variant of a finished run of this session must not make the page rerun itself forever
    at.selectbox(key="lab_variant").set_value(rec.id).run()
    at.checkbox(key="lab_delete_confirm").check().run()
    at.button(key="lab_delete").click().run(timeout=60)
    assert not at.exception and Workspace().load_variant(rec.id) is None
    assert rec.id not in set(table_with(at, "× smaller")["id"])


def test_rename_and_delete_from_the_lab(lab, demo, digits):
    from compression.registry import config_from_dict
    from compression.variant import make_variant

    model, base, _ = demo
    ws = Workspace()
    v = make_variant(model, base.id, base.arch, [config_from_dict({"method": "prune-unstructured",
                                                                   "sparsity": 0.2})], digits, ws, latency_repeats=3)
    at = app_test(LAB)
    at.run()
    at.selectbox(key="lab_variant").set_value(v.id).run()
    at.text_input(key=f"lab_rename_to_{v.id}").set_value("my small one").run()
    at.button(key="lab_rename").click().run()
    assert not at.exception
    assert Workspace().load_variant(v.id).name == "my small one"
    assert at.button(key="lab_delete").disabled  # needs the confirmation first
    at.checkbox(key="lab_delete_confirm").check().run()
    at.button(key="lab_delete").click().run()
    assert not at.exception
    assert Workspace().load_variant(v.id) is None and not ws.variant_dir(v.id).exists()
    assert v.id not in set(table_with(at, "× smaller")["id"])


def test_cancel_stops_the_run_and_stores_nothing(demo):
    at = app_test(LAB)
    at.run()
    at.selectbox(key="lab_method").set_value("distill").run()
    at.number_input(key="lab_distill_epochs").set_value(100).run()
    before = {r.id for r in Workspace().list_variants()}
    at.button(key="lab_run").click().run()
    job = jobs.get(at.session_state["lab_jobs"][-1])
    assert job.active
    at.run()
    at.button(key=f"lab_cancel_{job.key}").click().run()
    jobs.wait(job.key, 60)
    at.run()
    assert job.status == jobs.CANCELLED
    assert {r.id for r in Workspace().list_variants()} == before
    assert any("cancelled" in w.value for w in at.warning)


def test_bad_parameter_is_a_message_not_a_traceback(demo):
    at = app_test(LAB)
    at.run()
    at.selectbox(key="lab_method").set_value("int8").run()
    at.number_input(key="lab_int8_calibration_samples").set_value(0).run()  # below the widget's minimum
    assert not at.exception


def test_sensitivity_panel_runs_and_suggests_a_config(demo):
    at = app_test(LAB)
    at.run()
    at.number_input(key="lab_sens_samples").set_value(100).run()
    at.button(key="lab_sens_run").click().run()
    job = jobs.wait(at.session_state["lab_sens_job"], 120)
    assert job.status == jobs.DONE, job.error
    at.run()
    assert not at.exception, at.exception
    from compression.sensitivity import SensitivityTable

    saved = Workspace().load_run(job.result["run"])
    table = SensitivityTable(saved["kind"], saved["base_accuracy"], saved["rows"], saved.get("split", "validation"))
    assert len(table.layers()) == 5 and len(table.rows) == 5 * len(table.levels())
    at.number_input(key="lab_sens_budget").set_value(50.0).run()  # a generous budget: every layer gets a level
    sug = table_with(at, "suggested level")
    assert sug["suggested level"].notna().all()
    at.button(key="lab_sens_apply").click().run()
    assert at.session_state["lab_method"] == "prune-unstructured"
    from compression.pruning import parse_levels

    # each layer gets its own suggested level (the per-layer field), not one level for all
    assert parse_levels(at.text_input(key="lab_prune-unstructured_per_layer").value) == pytest.approx(
        dict(zip(sug["layer"], sug["suggested level"])))
    assert at.number_input(key="lab_prune-unstructured_sparsity").value == 0.0


def test_pareto_page_runs_the_automatic_search(demo):
    _, base, _ = demo
    at = app_test(PARETO)
    at.run()
    at.text_area(key="pareto_grid").set_value('[[{"method": "quantize-weights", "bits": 8}], [{"method": "nope"}]]')
    at.number_input(key="pareto_budget").set_value(2.0)
    at.button(key="pareto_search_run").click().run()
    assert not at.exception, at.exception
    job = jobs.wait(at.session_state["pareto_search_job"], 180)
    assert job.status == jobs.DONE, job.error
    at.run()
    assert not at.exception, at.exception
    res = job.result
    assert res["budget"] == pytest.approx(0.02) and len(res["tried"]) == 1  # the unknown method is skipped
    row = res["tried"][0]
    assert row["status"] == "within budget" and row["drop"] <= 0.02  # 8-bit weights cost < 2 points
    mask = pareto_mask(np.array([base.accuracy, row["accuracy"]]), np.array([base.size_bytes, row["cost"]]))
    assert {r["id"] for r in res["frontier"]} == {i for i, m in zip([base.id, row["record_id"]], mask) if m}
    assert any("Search done" in s.value for s in at.success)
    table = table_with(at, "frontier")
    assert set(res["records"]) <= set(table["id"])  # the kept variants are plotted at once
    at.text_area(key="pareto_grid").set_value("[[{]").run()
    assert not at.exception and any("not valid" in e.value for e in at.error)


@pytest.mark.parametrize("method", sorted(__import__("compression").METHODS))
def test_every_registered_method_has_a_form_with_valid_defaults(method, demo):
    from compression.registry import get_method

    at = app_test(LAB)
    at.run()
    at.selectbox(key="lab_method").set_value(method).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]  # the lab's defaults build a valid config
    assert not at.button(key="lab_run").disabled
    for fi in get_method(method).fields_info():
        widget = next(w for w in at.main if getattr(w, "key", None) == f"lab_{method}_{fi.name}")
        assert fi.help and widget.help.startswith(fi.help)
