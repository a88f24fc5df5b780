"""Real int8 execution: ONNX Runtime (the referee) and torch.ao FX against the fp32 demo CNN."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from compression.int8 import (
    FX_FORMAT,
    ONNX_FORMAT,
    Int8Config,
    OrtRunner,
    RuntimeModule,
    load_fx_int8,
    load_onnx_int8,
    sqnr_db,
    top1_agreement,
)
from compression.registry import CompressContext, apply
from nnlab.models.registry import create_model, model_hash


@pytest.fixture(scope="module")
def fp32_logits(demo, digits) -> np.ndarray:
    model, _, _ = demo
    x, _ = digits.tensors("test")
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.fixture(scope="module")
def ort_static(demo, digits, tmp_path_factory):
    model, _, _ = demo
    before = model_hash(model)
    res = apply(model, Int8Config(backend="onnxruntime", calibration_samples=128), CompressContext(
        data=digits, workdir=tmp_path_factory.mktemp("ort"), arch="demo-cnn"))
    assert model_hash(model) == before
    return res


def _int8_initializers(path) -> dict[str, int]:
    g = onnx.load(str(path)).graph
    counts: dict[str, int] = {}
    for t in g.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
        counts[name] = counts.get(name, 0) + int(np.prod(t.dims)) if t.dims else counts.get(name, 0) + 1
    return counts


def test_sqnr_reference_values() -> None:
    assert sqnr_db(np.array([1.0, 1.0]), np.array([1.0, 1.1])) == pytest.approx(10 * np.log10(2 / 0.01))
    assert sqnr_db(np.ones(3), np.ones(3)) == float("inf")
    assert top1_agreement(np.array([[1, 0], [0, 1]]), np.array([[2, 1], [1, 0]])) == 0.5


def test_onnxruntime_static_int8_agrees_with_fp32(ort_static, digits, fp32_logits) -> None:
    res = ort_static
    assert res.artifact_format == ONNX_FORMAT and res.artifact.suffix == ".onnx"
    assert isinstance(res.runner, OrtRunner) and res.runner.runtime.startswith("onnxruntime-int8")
    x, _ = digits.tensors("test")
    int8 = res.runner.predict_logits(x.numpy())
    sqnr = sqnr_db(fp32_logits, int8)
    agree = top1_agreement(fp32_logits, int8)
    print(f"ORT static int8: SQNR {sqnr:.1f} dB, top-1 agreement {agree:.4f}")
    assert sqnr >= 20.0
    assert agree >= 0.98
    opts = res.runner.session.get_session_options()  # threads stop spinning when a call returns
    assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    spinning = OrtRunner(res.artifact, 2, spin=True).session.get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ONNX Runtime's defaults
        spinning.get_session_config_entry("session.force_spinning_stop")
    assert not np.array_equal(int8, fp32_logits)  # it really is a different (quantized) computation
    # the PyTorch-facing model is the same runtime
    with torch.no_grad():
        assert np.array_equal(res.model(x[:7]).numpy(), res.runner.predict_logits(x[:7].numpy()))


def test_onnx_artifact_holds_int8_weights_and_is_about_4x_smaller(ort_static) -> None:
    res = ort_static
    g = onnx.load(str(res.artifact)).graph
    ops = {n.op_type for n in g.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    counts = _int8_initializers(res.artifact)
    weights = sum(n for k, n in counts.items() if k in ("int8", "uint8"))
    assert weights >= 0.95 * sum(counts.values())  # nearly every stored number is a byte
    ratio = res.extra["fp32_onnx_bytes"] / res.artifact.stat().st_size
    print(f"fp32 .onnx {res.extra['fp32_onnx_bytes']} B / int8 .onnx {res.artifact.stat().st_size} B = {ratio:.2f}x")
    assert 3.3 <= ratio <= 4.5


def test_onnx_artifact_loads_back_with_identical_outputs(ort_static, digits) -> None:
    template = create_model("demo-cnn", 1, digits.num_classes, (8, 8))
    loaded = load_onnx_int8(ort_static.artifact, template)
    x, _ = digits.tensors("test")
    assert np.array_equal(loaded.runner.predict_logits(x), ort_static.runner.predict_logits(x))


def test_qoperator_format_uses_integer_kernels(demo, digits, tmp_path, fp32_logits) -> None:
    model, _, _ = demo
    res = apply(model, Int8Config(backend="onnxruntime", quant_format="qoperator", calibration_samples=64, per_channel=False,
                                  exporter="torchscript"),
                CompressContext(data=digits, workdir=tmp_path))
    ops = {n.op_type for n in onnx.load(str(res.artifact)).graph.node}
    assert "QLinearConv" in ops
    int8 = res.runner.predict_logits(digits.tensors("test")[0])
    assert sqnr_db(fp32_logits, int8) >= 20.0 and top1_agreement(fp32_logits, int8) >= 0.98


def test_onnxruntime_dynamic_quantizes_linear_only(demo, digits, tmp_path, fp32_logits) -> None:
    model, _, _ = demo
    res = apply(model, Int8Config(backend="onnxruntime", mode="dynamic"), CompressContext(data=digits, workdir=tmp_path))
    ops = [n.op_type for n in onnx.load(str(res.artifact)).graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("Conv") == 3
    int8 = res.runner.predict_logits(digits.tensors("test")[0])
    assert sqnr_db(fp32_logits, int8) >= 25.0 and top1_agreement(fp32_logits, int8) >= 0.99
    bits = {r["name"]: r["bits"] for r in res.layers}
    assert bits["features.0"] == 32 and bits["classifier.2"] == 8


def test_torch_fx_static_int8_agrees_with_fp32_and_onnxruntime(demo, digits, tmp_path, fp32_logits,
                                                               ort_static) -> None:
    model, _, _ = demo
    before = model_hash(model)
    cfg = Int8Config(backend="torch-fx", calibration_samples=128)
    res = apply(model, cfg, CompressContext(data=digits, workdir=tmp_path))
    assert model_hash(model) == before
    assert res.artifact_format == FX_FORMAT
    x, _ = digits.tensors("test")
    fx = res.runner.predict_logits(x)
    sqnr, agree = sqnr_db(fp32_logits, fx), top1_agreement(fp32_logits, fx)
    print(f"FX static int8: SQNR {sqnr:.1f} dB, top-1 agreement {agree:.4f}")
    assert sqnr >= 20.0 and agree >= 0.98
    # ONNX Runtime as referee: two independent int8 runtimes agree on the labels
    assert top1_agreement(fx, ort_static.runner.predict_logits(x)) >= 0.97
    # the artifact loads back into a freshly built template with identical outputs
    record = SimpleNamespace(config=cfg.to_dict(), extra={"input_shape": [1, 8, 8]})
    loaded = load_fx_int8(res.artifact, create_model("demo-cnn", 1, digits.num_classes, (8, 8)), record)
    assert np.array_equal(loaded.runner.predict_logits(x), fx)
    assert isinstance(loaded.model, RuntimeModule)


def test_calibration_uses_the_chosen_number_of_samples(demo, digits, tmp_path, ort_static) -> None:
    model, _, _ = demo
    res = apply(model, Int8Config(backend="onnxruntime", calibration_samples=16), CompressContext(data=digits, workdir=tmp_path))
    assert res.extra["calibration_samples"] == 16 and ort_static.extra["calibration_samples"] == 128
    x, _ = digits.tensors("test")
    # different calibration sets give different activation ranges, hence different int8 outputs
    assert not np.array_equal(res.runner.predict_logits(x), ort_static.runner.predict_logits(x))


def test_torch_dynamic_int8_and_its_artifact(demo, digits, tmp_path, fp32_logits) -> None:
    model, _, _ = demo
    cfg = Int8Config(backend="torch-fx", mode="dynamic")
    res = apply(model, cfg, CompressContext(data=digits, workdir=tmp_path))
    x, _ = digits.tensors("test")
    out = res.runner.predict_logits(x)
    assert sqnr_db(fp32_logits, out) >= 25.0 and top1_agreement(fp32_logits, out) >= 0.99
    dynamic = [m for m in res.runner.module.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert len(dynamic) == 2  # both Linear layers int8; the convolutions stay float
    assert sum(isinstance(m, torch.nn.Conv2d) for m in res.runner.module.modules()) == 3
    record = SimpleNamespace(config=cfg.to_dict(), extra={"input_shape": [1, 8, 8]})
    loaded = load_fx_int8(res.artifact, create_model("demo-cnn", 1, digits.num_classes, (8, 8)), record)
    assert np.array_equal(loaded.runner.predict_logits(x), out)


def test_variant_end_to_end_records_int8_runtime(demo, digits, tmp_path) -> None:
    from compression.variant import load_variant_result, make_variant
    from nnlab.workspace import Workspace

    model, record, _ = demo
    ws = Workspace(tmp_path / "ws")
    rec = make_variant(model, record.id, "demo-cnn", [Int8Config(backend="onnxruntime", calibration_samples=64, threads=1)], digits, ws,
                       latency_repeats=5, threads=1)
    assert rec.artifact_format == ONNX_FORMAT
    assert rec.latency["1"]["runtime"].startswith("onnxruntime-int8") and rec.latency["1"]["threads"] == 1
    assert rec.accuracy >= record.accuracy - 0.02
    assert rec.size_bytes * 3 < rec.size_dense_bytes
    assert rec.macs > 0 and rec.params == sum(p.numel() for p in model.parameters())
    back = load_variant_result(ws, rec)
    x, y = digits.tensors("test")
    acc = float((back.runner.predict_logits(x).argmax(1) == y.numpy()).mean())
    assert acc == pytest.approx(rec.accuracy)  # the stored artifact is the model that was measured


@pytest.mark.parametrize("kwargs", [{"backend": "tensorrt"}, {"mode": "weird"}, {"calibration_samples": 0},
                                    {"quant_format": "x"}, {"threads": -1}])
def test_config_rejects_absurd_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Int8Config(**kwargs)
