"""Bulk passes in the fastest verified runtime: same predictions as eager PyTorch, the runtime stated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diagnostics import datacheck
from diagnostics.mismatch import features_and_logits
from nnlab.evaluate import predict_logits
from nnlab.jobs.kinds import ensure_evaluation, runtime_key
from nnlab.runtimes import bulk
from nnlab.runtimes.onnx import ort_fp32_runner
from nnlab.workspace import Workspace


def test_the_chosen_runtime_predicts_what_pytorch_predicts_on_the_whole_split(demo, digits):
    model = demo[0]
    rt = bulk.bulk_runtime(model, digits, "test", min_images=0)
    checked = {f["name"]: f for f in rt.figures}
    # every candidate was built and verified against eager PyTorch on real test images, then timed
    assert {"pytorch", "onnxruntime", "openvino"} <= set(checked), rt.summary
    for name in ("onnxruntime", "openvino"):
        assert checked[name]["status"] == "ok", checked[name]
        assert checked[name]["top1_agreement"] == 1.0 and checked[name]["max_abs_diff"] <= 1e-3
        assert checked[name]["median_ms"] > 0
    assert rt.runtime in {f["runtime"] for f in rt.figures} | {bulk.EAGER} and rt.runtime in rt.summary
    eager = predict_logits(model, digits, "test")
    if rt.runner is not None:
        fast = predict_logits(model, digits, "test", runner=rt.runner)
        assert (fast.argmax(1) == eager.argmax(1)).all()
        assert np.abs(fast - eager).max() <= 1e-3


def test_small_passes_and_the_switch_stay_in_eager_pytorch(demo, digits, monkeypatch):
    assert bulk.bulk_runtime(demo[0], digits, "test").runner is None  # 450 images: not worth choosing
    assert "too few" in bulk.bulk_runtime(demo[0], digits, "test").summary
    monkeypatch.setenv("NNLAB_BULK_RUNTIME", "pytorch")
    rt = bulk.bulk_runtime(demo[0], digits, "test", min_images=0)
    assert rt.runner is None and rt.runtime == bulk.EAGER and "NNLAB_BULK_RUNTIME" in rt.summary


def test_the_evaluation_pass_stores_its_runtime_and_equal_logits(demo, digits, tmp_path):
    ws = Workspace(tmp_path)
    res = ensure_evaluation(ws, "m", demo[0], digits, "test", min_runtime_images=0)
    info = ws.load_run(runtime_key("m", digits.id, "test"))
    assert info is not None and info["runtime"] and info["summary"]
    eager = predict_logits(demo[0], digits, "test")
    assert (res.preds == eager.argmax(1)).all() and np.abs(res.logits - eager).max() <= 1e-3


def test_the_feature_pass_in_a_runtime_equals_the_hooked_pass(demo, digits):
    model = demo[0]
    rt, fm = datacheck.features_runtime(model, digits, len(digits.y_train), min_images=0)
    assert fm is not None
    checked = {f["name"]: f for f in rt.figures}
    assert checked["onnxruntime"]["status"] == "ok" and checked["openvino"]["status"] == "ok"
    f_ref, l_ref = features_and_logits(model, digits, "train")
    # whichever runtime won, ONNX Runtime running the features-and-logits copy gives the hooked pass's numbers
    runner = rt.runner or ort_fp32_runner(fm, tuple(digits.x_train.shape[1:]), torch.get_num_threads())
    f_rt, l_rt = features_and_logits(model, digits, "train", runner=runner)
    assert f_rt.shape == f_ref.shape and np.abs(f_rt - f_ref).max() <= 1e-3
    assert (l_rt.argmax(1) == l_ref.argmax(1)).all()


def test_the_data_report_says_which_runtime_its_feature_pass_ran_in(demo, digits):
    rep = datacheck.data_report(demo[0], digits, min_runtime_images=0)
    assert rep.runtime and ("openvino" in rep.runtime or "onnxruntime" in rep.runtime or "pytorch" in rep.runtime)
    again = datacheck.DataReport.from_dict(rep.to_dict())
    assert again.runtime == rep.runtime


@pytest.mark.slow
def test_resnet18_at_224_evaluates_in_a_verified_runtime(tmp_path):
    from nnlab.data.preprocess import imagenet
    from nnlab.data.sets import load_dataset
    from nnlab.data.synthetic import make_shapes_folder
    from nnlab.models.registry import create_model

    folder = make_shapes_folder(tmp_path / "shapes", per_class=4, size=256)
    data = load_dataset("imagefolder", folder, imagenet(), workspace=tmp_path / "ws")
    assert tuple(data.x_test.shape[1:]) == (3, 224, 224)
    model = create_model("tv:resnet18", 3, data.num_classes, (224, 224), seed=0).eval()
    rt = bulk.bulk_runtime(model, data, "test", min_images=0, batch=8)
    verified = [f for f in rt.figures if f["status"] == "ok" and f["name"] != "pytorch"]
    assert verified, rt.summary  # ONNX Runtime or OpenVINO took ResNet-18 at 224 and matched PyTorch
    assert all(f["top1_agreement"] == 1.0 and f["max_abs_diff"] <= 1e-3 for f in verified)
    eager = predict_logits(model, data, "test", batch_size=8)
    runner = rt.runner or ort_fp32_runner(model, (3, 224, 224), torch.get_num_threads())
    fast = predict_logits(model, data, "test", batch_size=8, runner=runner)
    assert (fast.argmax(1) == eager.argmax(1)).all() and np.abs(fast - eager).max() <= 1e-3
