"""Diagnosing and repairing int8 variants run by ONNX Runtime and OpenVINO (issue 21): per-layer error from the
runtime's own intermediate outputs, and layers put back into float until the drop is within budget."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from compression.int8 import Int8Config, onnx_layer_nodes, to_int8
from diagnostics import runtimediff as rd
from nnlab.runtimes import openvino as ovr


@pytest.fixture(scope="module")
def outlier_cnn(digits):
    """A small CNN trained on digits, then conv2 made badly quantizable: conv1's channel 0 is dead (always 0
    after ReLU) and every output channel of conv2 gets a weight 1000× its largest on that channel. The float
    model does not change (the weight multiplies zeros), but each int8 weight scale grows 1000-fold, so
    conv2's other weights all round to zero in int8."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 8, 3, padding=1), r1=nn.ReLU(), conv2=nn.Conv2d(8, 16, 3, padding=1), r2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(2), flat=nn.Flatten(), fc=nn.Linear(64, 10)))
    x, y = digits.tensors("train", np.arange(len(digits.y_train)))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        net.conv1.weight[0] = 0.0
        net.conv1.bias[0] = -1.0
        net.conv2.weight[:, 0, 1, 1] = 1000 * net.conv2.weight.abs().max()
    return net


def _x(digits, n=128):
    return digits.tensors("test", np.arange(n))


def test_ort_per_layer_error_comes_from_the_runtime_and_finds_the_outlier_layer(outlier_cnn, digits, tmp_path):
    res = to_int8(outlier_cnn, digits, Int8Config(backend="onnxruntime"), tmp_path)
    x, _ = _x(digits)
    rows = rd.ort_layer_errors(outlier_cnn, res.artifact, digits.input_shape, x, res.extra["exporter"])
    assert [r.name for r in rows] == ["conv1", "conv2", "fc"]  # the page's layer names, graph order
    assert all(np.isfinite(r.accumulated_sqnr_db) and np.isfinite(r.local_sqnr_db) for r in rows), rows
    by = {r.name: r for r in rows}
    assert max(rows, key=lambda r: r.local_rel).name == "conv2"
    assert by["conv2"].local_rel > 0.5 and by["conv1"].local_rel < 0.05  # conv2's weights are gone, conv1 is fine
    assert max(rd.added_error(rows).items(), key=lambda kv: kv[1])[0] == "conv2"
    # the simulation (local) against the runtime (accumulated) where both see the same input: the first layer
    assert by["conv1"].local_rel == pytest.approx(by["conv1"].accumulated_rel, rel=rd.SIMULATION_TOLERANCE)
    # the runtime's own outputs: conv1's output in the int8 graph, run by ONNX Runtime, against the PyTorch base
    import onnxruntime as ort
    from onnxruntime.quantization import qdq_loss_debug as qd

    aug = tmp_path / "aug.onnx"
    qd.modify_model_output_intermediate_tensors(str(res.artifact), str(aug))
    sess = ort.InferenceSession(str(aug), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x.numpy()})))
    import onnx

    node = onnx_layer_nodes(onnx.load(str(res.artifact)).graph)["conv1"]
    name = next(n.output[0] for n in onnx.load(str(res.artifact)).graph.node if n.name == node)
    with torch.no_grad():
        ref = torch.relu(outlier_cnn.conv1(x)).numpy().ravel()
    # the quantizer dropped the ReLU after the Conv (the output's uint8 QuantizeLinear clamps at zero instead)
    got = np.maximum(out[name + "_ReshapedSavedOutput"], 0)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) == pytest.approx(by["conv1"].accumulated_rel, rel=1e-3)


@pytest.mark.skipif(not ovr.available(), reason="OpenVINO is not installed")
def test_openvino_per_layer_error_from_extra_outputs_finds_the_outlier_layer(outlier_cnn, digits, tmp_path):
    res = to_int8(outlier_cnn, digits, Int8Config(backend="openvino"), tmp_path)
    x, _ = _x(digits)
    rows = rd.ov_layer_errors(outlier_cnn, res.artifact, digits.input_shape, x)
    assert [r.name for r in rows] == ["conv1", "conv2", "fc"]
    assert all(np.isfinite(r.accumulated_sqnr_db) for r in rows)
    by = {r.name: r for r in rows}
    assert by["conv2"].accumulated_rel > 0.5 > 0.05 > by["conv1"].accumulated_rel
    assert max(rd.added_error(rows).items(), key=lambda kv: kv[1])[0] == "conv2"


def test_layers_left_in_float_map_to_runtime_nodes(outlier_cnn, digits, tmp_path):
    res = to_int8(outlier_cnn, digits, Int8Config(backend="onnxruntime", ignored_layers="conv2"), tmp_path)
    assert res.extra["nodes_to_exclude"] and {r["name"]: r["quantized"] for r in res.layers}["conv2"] is False
    import onnx

    g = onnx.load(str(res.artifact)).graph
    conv2 = next(n for n in g.node if n.name == res.extra["nodes_to_exclude"][0])
    assert conv2.input[1] == "conv2.weight"  # float weight, no DequantizeLinear in front
    with pytest.raises(ValueError, match="nope"):
        to_int8(outlier_cnn, digits, Int8Config(backend="onnxruntime", ignored_layers="nope"), tmp_path / "x")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_repair_puts_the_outlier_layer_back_first_and_stores_a_measured_variant(outlier_cnn, digits, backend):
    if backend == "openvino" and not ovr.available():
        pytest.skip("OpenVINO is not installed")
    from compression.variant import make_variant
    from nnlab.measure import comparable
    from nnlab.workspace import Workspace

    ws = Workspace()
    v = make_variant(outlier_cnn, "hand-outlier", "hand", [Int8Config(backend=backend)], digits, ws)
    x, y = _x(digits, 450)
    with torch.no_grad():
        acc_b = float((outlier_cnn(x).argmax(1) == y).float().mean())
    assert acc_b - v.accuracy > 0.2  # conv2 in int8 ruins the model
    budget = 0.02
    new = rd.repair_runtime_variant(outlier_cnn, "hand-outlier", "hand", v, digits, ws, budget, samples=450)
    layers = new.extra["restored_layers"]
    assert layers[0] == "conv2" and new.config["layers"] == layers and new.config["method"] == "restore"
    assert new.extra["repair_ranking"][0] == "conv2"
    assert acc_b - new.extra["repair_accuracy"] <= budget + 1e-9
    assert new.accuracy == pytest.approx(new.extra["repair_accuracy"], abs=1e-9)  # same 450 test images
    assert new.artifact_format == v.artifact_format and comparable(new) and new.parent == "hand-outlier"
    assert new.latency["1"]["runtime"] == v.latency["1"]["runtime"]  # its latency cost, in the same runtime


@pytest.fixture(scope="module")
def ort_variant(demo, digits):
    from compression.variant import make_variant
    from nnlab.workspace import Workspace

    model, base, _ = demo
    return make_variant(model, base.id, base.arch, [Int8Config(backend="onnxruntime")], digits, Workspace())


def test_the_diagnosis_job_measures_an_ort_int8_variant_layer_by_layer(demo, digits, ort_variant):
    import diagnostics.tasks  # noqa: F401 - registers the job kinds
    from nnlab.jobs import manager as jobs
    from nnlab.jobs.refs import data_ref
    from nnlab.workspace import Workspace

    model, base, _ = demo
    ws, v = Workspace(), ort_variant
    job = jobs.submit("variant-diagnosis", {"model_id": base.id, "data": data_ref("digits"), "variant_id": v.id,
                                            "samples": 64, "top_k": 2})
    jobs.wait(job.key, 300)
    assert job.status == jobs.DONE, job.error
    run = ws.load_run(job.result["run"])
    names = [e["name"] for e in run["errors"]]
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert names and set(names) <= set(weighted) and run["note"] == ""
    assert all(np.isfinite(e["local_sqnr_db"]) and np.isfinite(e["accumulated_sqnr_db"]) for e in run["errors"])
    assert 1 <= len(run["recovery"]) <= 2 and all(len(r["layers"]) == 1 for r in run["recovery"])
    # the demo's convolutions are followed by BatchNorm, which the exporter folds into them: the simulation compares
    # in that folded domain, so on the first layer (both see the same images) it agrees with the runtime
    first = run["errors"][0]
    assert first["local_rel"] < 0.1
    assert first["local_rel"] == pytest.approx(first["accumulated_rel"], rel=rd.SIMULATION_TOLERANCE)


def test_the_page_ranks_the_layers_of_an_int8_variant_and_its_repair_is_a_listed_variant(demo, ort_variant):
    from nnlab.workspace import Workspace
    from tests.conftest import app_test

    model, base, _ = demo
    at = app_test("pages/compress_diagnose.py", timeout=600)
    at.session_state["compare_ids"] = [ort_variant.id]
    at.run()
    assert not at.exception, at.exception
    errors = next(d.value for d in at.dataframe if "local_rel" in d.value.columns)
    assert len(errors) >= 2 and np.isfinite(errors["accumulated_sqnr_db"]).all()
    recovery = next(d.value for d in at.dataframe if "recovered" in d.value.columns)
    assert 1 <= len(recovery) <= 5 and recovery["accuracy"].is_monotonic_decreasing
    before = {v.id for v in Workspace().list_variants()}
    at.button(key="diag_repair").click().run()
    assert not at.exception, at.exception
    new = [v for v in Workspace().list_variants() if v.id not in before]
    assert len(new) == 1 and new[0].config["method"] == "restore" and new[0].parent == base.id
    assert new[0].extra["from_variant"] == ort_variant.id and isinstance(new[0].extra["restored_layers"], list)
    assert new[0].artifact_format == ort_variant.artifact_format  # still run by ONNX Runtime: on the Pareto plot
    assert any("New variant" in s.value for s in at.success)
