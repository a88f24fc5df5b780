"""Quantization-aware training: BN folding, fake-quantized layers with STE gradients, conversion to real int8."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from compression.halfprec import HalfPrecisionConfig
from compression.int8 import OrtRunner, sqnr_db, top1_agreement
from compression.qat import QATConfig, QATLayer, fold_batchnorm, insert_fake_quant, qat_copy, remove_fake_quant
from compression.quantization import fake_quantize
from compression.registry import CompressContext, apply
from nnlab.models.registry import model_hash


def _conv_bn() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 5 * 5, 3))
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.5, 0.5)
    return m.eval()


def test_fold_batchnorm_keeps_outputs() -> None:
    m = _conv_bn()
    x = torch.randn(6, 2, 5, 5)
    folded, n = fold_batchnorm(copy.deepcopy(m))
    assert n == 1
    assert not any(isinstance(k, nn.BatchNorm2d) for k in folded.modules())
    assert torch.allclose(folded(x), m(x), atol=1e-5)


def test_qat_layer_forward_and_straight_through_gradient() -> None:
    m, _ = fold_batchnorm(_conv_bn())
    insert_fake_quant(m)
    layer = m.get_submodule("0")
    assert isinstance(layer, QATLayer)
    x = torch.randn(4, 2, 5, 5)
    m.train()
    m(x)  # observe an activation range
    m.eval()
    # forward: the conv sees fake-quantized input and symmetric per-channel int8 weights
    conv = layer.layer
    xq = layer.act(x)
    assert not torch.equal(xq, x) and (xq - x).abs().max() <= (x.max() - x.min()) / 255
    wq = fake_quantize(conv.weight.detach(), 8, symmetric=True, axis=0)
    assert len(torch.unique(wq[0])) <= 255
    assert torch.allclose(layer(x), nn.functional.conv2d(xq, wq, conv.bias, padding=1), atol=1e-6)
    # backward: straight-through — the weight gradient equals the gradient w.r.t. the quantized weight
    gy = torch.randn(4, 4, 5, 5)
    (layer(x) * gy).sum().backward()
    g = conv.weight.grad.clone()
    wq_leaf = wq.clone().requires_grad_(True)
    (nn.functional.conv2d(xq, wq_leaf, conv.bias, padding=1) * gy).sum().backward()
    assert torch.allclose(g, wq_leaf.grad, rtol=1e-5, atol=1e-6)
    assert g.abs().sum() > 0


def test_remove_fake_quant_leaves_weights_on_int8_grid() -> None:
    m, _ = fold_batchnorm(_conv_bn())
    insert_fake_quant(m)
    remove_fake_quant(m)
    for mod in m.modules():
        assert not isinstance(mod, QATLayer)
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
            s = w.abs().amax(1, keepdim=True) / 127
            q = w / s
            assert torch.allclose(q, q.round(), atol=1e-3) and q.abs().max() <= 127 + 1e-3


def test_qat_converts_to_real_int8_and_keeps_accuracy(demo, digits, tmp_path) -> None:
    model, record, _ = demo
    before = model_hash(model)
    cfg = QATConfig(epochs=1, train_samples=512, calibration_samples=128, lr=2e-4)
    res = apply(model, cfg, CompressContext(data=digits, workdir=tmp_path, arch="demo-cnn"))
    assert model_hash(model) == before
    assert isinstance(res.runner, OrtRunner) and res.artifact.suffix == ".onnx"
    assert res.extra["batchnorm_folded"] == 3 and res.extra["fake_quantized_layers"] == 5
    assert len(res.extra["qat_history"]) == 1
    x, y = digits.tensors("test")
    int8 = res.runner.predict_logits(x)
    acc = float((int8.argmax(1) == y.numpy()).mean())
    print(f"QAT int8 accuracy {acc:.4f} vs fp32 {record.accuracy:.4f}")
    assert acc >= record.accuracy - 0.02
    # the int8 runtime matches the QAT float model it was converted from (weights already on the grid)
    with torch.no_grad():
        ref = res.model.float_model(x).numpy()
    assert sqnr_db(ref, int8) >= 20.0 and top1_agreement(ref, int8) >= 0.98


def test_qat_copy_does_not_touch_input() -> None:
    m = _conv_bn()
    h = model_hash(m)
    q = qat_copy(m)
    assert model_hash(m) == h and any(isinstance(k, QATLayer) for k in q.modules())


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_variant(demo, digits, tmp_path, dtype: str) -> None:
    model, record, _ = demo
    before = model_hash(model)
    res = apply(model, HalfPrecisionConfig(dtype=dtype), CompressContext(data=digits, workdir=tmp_path))
    assert model_hash(model) == before
    from safetensors.torch import load_file

    stored = load_file(str(res.artifact))
    want = torch.float16 if dtype == "fp16" else torch.bfloat16
    assert all(t.dtype == want for t in stored.values() if t.is_floating_point())
    fp32_bytes = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    assert res.artifact.stat().st_size < 0.55 * fp32_bytes + 4096
    x, y = digits.tensors("test")
    with torch.no_grad():
        ref = model(x).numpy()
    half = res.runner.predict_logits(x)
    assert sqnr_db(ref, half) >= (40.0 if dtype == "fp16" else 25.0)
    assert float((half.argmax(1) == y.numpy()).mean()) >= record.accuracy - 0.01
    assert res.extra["compute"] in (dtype, "fp32")
    assert np.all(np.isfinite(half))


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"lr": 5.0}, {"backend": "tflite"}, {"train_samples": -1}])
def test_config_rejects_absurd_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        QATConfig(**kwargs)


def test_half_precision_fp32_compute_and_loader(demo, digits, tmp_path) -> None:
    from types import SimpleNamespace

    from compression.registry import ARTIFACT_LOADERS

    model, _, _ = demo
    cfg = HalfPrecisionConfig(dtype="fp16", compute="fp32")
    res = apply(model, cfg, CompressContext(data=digits, workdir=tmp_path))
    assert res.extra["compute"] == "fp32" and res.runner.runtime.endswith("fp32-compute")
    x, _ = digits.tensors("test")
    with torch.no_grad():
        assert np.array_equal(res.runner.predict_logits(x), res.model(x).numpy())
    from nnlab.models.registry import create_model

    record = SimpleNamespace(config=cfg.to_dict(), extra={"input_shape": [1, 8, 8]})
    back = ARTIFACT_LOADERS["safetensors-fp16"](res.artifact, create_model("demo-cnn", 1, 10, (8, 8)), record)
    assert np.array_equal(back.runner.predict_logits(x), res.runner.predict_logits(x))
