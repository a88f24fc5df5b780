"""Side-by-side computations on hand-made evaluations (exact counts) and on a real pruned variant."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from compression import compare
from nnlab.evaluate import result_from_logits
from nnlab.records import Record


def ev_from_preds(preds, labels, k=3, conf=0.9):
    preds = np.asarray(preds)
    logits = np.full((len(preds), k), 0.0, np.float32)
    logits[np.arange(len(preds)), preds] = np.log(conf / (1 - conf) * (k - 1))  # softmax max = conf
    return result_from_logits(logits, np.asarray(labels))


LABELS = [0, 0, 1, 1, 2, 2, 2, 0]
A = ev_from_preds([0, 0, 1, 2, 2, 2, 1, 0], LABELS)
B = ev_from_preds([0, 1, 1, 1, 2, 0, 1, 0], LABELS, conf=0.6)


def test_agreement_changed_and_breakdown_exact():
    assert compare.changed_indices(A, B).tolist() == [1, 3, 5]
    assert compare.agreement(A, B) == pytest.approx(5 / 8)
    assert compare.change_breakdown(A, B) == {"changed": 3, "fixed": 1, "broken": 2, "wrong→wrong": 0}
    assert compare.changed_indices(A, A).size == 0


def test_per_class_and_confusion_difference():
    d = compare.per_class_difference(A, B, 3)
    # class 0: A 3/3, B 2/3; class 1: A 1/2, B 2/2; class 2: A 2/3, B 1/3
    assert d.tolist() == pytest.approx([-1 / 3, 0.5, -1 / 3])
    diff = compare.confusion_difference(A, B, 3)
    ref = confusion_matrix(B.labels, B.preds, labels=[0, 1, 2]) - confusion_matrix(A.labels, A.preds, labels=[0, 1, 2])
    assert (diff == ref).all() and (diff.sum(axis=1) == 0).all()
    assert diff[0, 1] == 1 and diff[1, 2] == -1


def test_changed_samples_order_and_confidences():
    items = compare.changed_samples(A, B)
    assert [i["index"] for i in items] == [1, 5, 3]  # broken first (equal confidence: index order), then fixed
    assert all(i["broken"] for i in items[:2]) and not items[2]["broken"]
    assert items[0]["conf_a"] == pytest.approx(0.9, abs=1e-5) and items[0]["conf_b"] == pytest.approx(0.6, abs=1e-5)
    assert len(compare.changed_samples(A, B, limit=1)) == 1


def test_mismatched_evaluations_are_refused():
    with pytest.raises(ValueError):
        compare.agreement(A, ev_from_preds([0, 1], [0, 1]))


def _lat(ms, runtime):
    from nnlab.measure import HARNESS

    return {"median_ms": ms, "runtime": runtime, "harness": HARNESS, "threads": 2}


def _rec(i, acc, size, lat, layers=(), parent="", runtime="openvino-int8-cpu", baseline=None, latencies=None):
    return Record(id=i, name=i, method="m", accuracy=acc, size_bytes=size, size_gzip_bytes=size // 2, macs=100,
                  params=10, nonzero_params=5, latency={"1": _lat(lat, runtime)}, layers=list(layers), parent=parent,
                  baseline=baseline or {}, latencies=latencies or {})


def test_metrics_table_deltas_both_speedups_and_layer_details_and_csv():
    ref = _rec("base", 0.99, 4000, 1.5, [{"name": "c1", "sparsity": 0.0}], runtime="openvino-fp32-cpu",
               latencies={"openvino-fp32-cpu": {"1": _lat(1.5, "openvino-fp32-cpu")},
                          "pytorch-eager-fp32-cpu": {"1": _lat(4.0, "pytorch-eager-fp32-cpu")}})
    v = _rec("v", 0.97, 1000, 0.5, [{"name": "c1", "sparsity": 0.5, "bits": 8}, {"name": "fc", "clusters": 16}],
             parent="base", baseline={"runtime": "openvino-fp32-cpu", "latency": {"1": _lat(1.6, "openvino-fp32-cpu")}})
    old = _rec("old", 0.97, 1000, 0.1, parent="base")  # no harness, no baseline: not compared
    old.latency["1"].pop("harness")
    df = compare.metrics_table([ref, v, old])
    row = df.set_index("id").loc["v"]
    assert row["Δ accuracy (points)"] == pytest.approx(-2.0)
    assert row["size ÷ ref"] == pytest.approx(0.25)
    assert row[compare.SPEEDUP_SAME] == pytest.approx(1.6 / 0.5)  # against the base timed beside it
    assert row[compare.SPEEDUP_FASTEST] == pytest.approx(1.5 / 0.5)  # against the base's fastest fp32
    assert row["base timed in"] == "openvino-fp32-cpu" and row["base's fastest fp32"] == "openvino-fp32-cpu"
    assert df.set_index("id").loc["base", compare.SPEEDUP_SAME] == pytest.approx(1.0)
    stale = df.set_index("id").loc["old"]
    assert np.isnan(stale["latency b1 (ms)"]) and np.isnan(stale[compare.SPEEDUP_SAME]) and not stale["latency comparable"]
    assert list(df.columns[:2]) == ["name", "accuracy"] and df.columns[-1] == "id"  # compared quantities first
    lay = compare.layer_details([ref, v]).set_index("layer")
    assert lay.loc["c1", "sparsity · v"] == 0.5 and lay.loc["c1", "bits · v"] == 8
    assert lay.loc["fc", "clusters · v"] == 16
    evs = [A, B]
    csv = compare.comparison_csv([ref, v], evs)
    head = csv.splitlines()[0].split(",")
    assert head[:5] == ["name", "accuracy", "Δ accuracy (points)", "agreement with ref", "changed predictions"]
    assert csv.splitlines()[2].split(",")[4] == "3"  # changed predictions of v against base


def test_real_pruned_variant_changed_count(demo, digits, tmp_path):
    from compression.registry import config_from_dict
    from compression.variant import load_variant_model, make_variant
    from nnlab.evaluate import evaluate
    from nnlab.workspace import Workspace

    model, rec, _ = demo
    ws = Workspace(tmp_path / "ws")
    v = make_variant(model, rec.id, rec.arch, [config_from_dict({"method": "prune-unstructured", "sparsity": 0.8})],
                     digits, ws, latency_repeats=3)
    vm = load_variant_model(ws, v)
    ea, eb = evaluate(model, digits, "test"), compare.evaluate_model(vm, digits, "test")
    direct = int((model(digits.tensors("test")[0]).argmax(1).numpy() != vm(digits.tensors("test")[0]).argmax(1)
                  .numpy()).sum())
    assert len(compare.changed_indices(ea, eb)) == direct
    assert eb.accuracy == pytest.approx(v.accuracy)
    w = compare.weight_values(vm, "features.4")
    assert (w == 0).mean() == pytest.approx(0.8, abs=0.005)
    fig = compare.histogram_figure({"base": compare.weight_values(model, "features.4"), "v": w}, "w")
    assert len(fig.data) == 2 and sum(fig.data[1].y) == w.size


def test_exports_load_back(demo, digits):
    import onnxruntime as ort
    from safetensors.torch import load as st_load

    from compression import export
    from compression.pareto import pareto_figure

    model, rec, _ = demo
    state = st_load(export.state_dict_bytes(model))
    assert all((state[k] == v).all() for k, v in model.state_dict().items())
    x = digits.tensors("test", np.arange(64))[0]
    sess = ort.InferenceSession(export.onnx_bytes(model, digits.input_shape), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    ref = model(x).detach().numpy()
    assert np.abs(out - ref).max() < 1e-3 and (out.argmax(1) == ref.argmax(1)).all()
    assert Record.from_json(export.record_json(rec)).to_dict() == rec.to_dict()
    html = export.figure_html(pareto_figure([rec], "size"))
    assert "<html>" in html[:40] and "plotly" in html and "Accuracy vs size" in html
    if export.png_available():
        assert export.figure_png(pareto_figure([rec], "size"))[:4] == b"\x89PNG"
    else:
        with pytest.raises(export.ExportError, match="kaleido|Chromium"):
            export.figure_png(pareto_figure([rec], "size"))
    assert export.safe_filename("a b/c?.onnx") == "a-b-c-.onnx"
