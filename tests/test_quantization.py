"""Weight quantization (seed 000 Algorithms 2–3), binary weights, FakeQuant/STE and the packed artifact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compression import packing
from compression.quantization import (
    WeightQuantConfig,
    binarize,
    compute_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
    quantize_tensor,
)
from compression.registry import CompressContext, apply
from nnlab.evaluate import evaluate
from nnlab.models.registry import create_model, load_into, model_hash


def direct_alg23(x: np.ndarray, bits: int, symmetric: bool, per_channel: bool) -> tuple[np.ndarray, ...]:
    """Algorithms 2–3 written out in numpy float32, independently of the code under test."""
    x = x.astype(np.float32)
    red = tuple(range(1, x.ndim)) if per_channel else None
    keep = per_channel
    xmin = np.minimum(x.min(axis=red, keepdims=keep), np.float32(0))
    xmax = np.maximum(x.max(axis=red, keepdims=keep), np.float32(0))
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax
        m = np.maximum(xmax, -xmin)
        s = (m / np.float32(qmax)).astype(np.float32)
        s = np.where(s > 0, s, np.float32(1)).astype(np.float32)
        z = np.zeros_like(s)
    else:
        qmin, qmax = 0, 2**bits - 1
        s = ((xmax - xmin) / np.float32(2**bits - 1)).astype(np.float32)
        s = np.where(s > 0, s, np.float32(1)).astype(np.float32)
        z = np.round(np.float32(qmin) - xmin / s).astype(np.float32)
    xq = np.clip(np.round(x / s) + z, qmin, qmax)
    xhat = (s * (xq - z)).astype(np.float32)
    return xq.astype(np.int64), s, z, xhat


@pytest.mark.parametrize("bits", [8, 6, 4, 3, 2])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_matches_direct_implementation_and_error_within_half_step(bits: int, symmetric: bool,
                                                                  per_channel: bool) -> None:
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(6, 3, 3, 3, generator=g) * torch.linspace(0.1, 2.0, 6).view(-1, 1, 1, 1) + 0.3
    axis = 0 if per_channel else None
    spec = quantize_tensor(x, bits, symmetric, axis)
    xq, s, z, xhat = direct_alg23(x.numpy(), bits, symmetric, per_channel)
    assert np.array_equal(spec.q.numpy(), xq)
    assert np.array_equal(spec.scale.numpy().reshape(-1), s.reshape(-1))
    assert np.array_equal(spec.zero_point.numpy().reshape(-1), z.reshape(-1))
    got = spec.dequantize()
    assert np.array_equal(got.numpy(), xhat)
    qmin, qmax = qrange(bits, symmetric)
    assert int(spec.q.min()) >= qmin and int(spec.q.max()) <= qmax
    # every value lies inside [min(X,0), max(X,0)], so the error is at most s/2 (plus float rounding)
    s_b = torch.from_numpy(s).expand_as(x) if per_channel else torch.full_like(x, float(s))
    assert torch.all((got - x).abs() <= s_b / 2 + 1e-6 * x.abs().max())
    # the range is used: both ends of the integer grid are reached (asymmetric) / the largest |q| is q_max
    if symmetric:
        assert int(spec.q.abs().max()) == qmax
    else:
        assert int(spec.q.max()) == qmax or int(spec.q.min()) == qmin


def test_zero_is_exact_and_zero_point_is_integer() -> None:
    x = torch.tensor([[-1.3, 0.0, 0.2, 2.9], [0.0, 0.5, 0.7, 0.1]])
    for symmetric in (False, True):
        spec = quantize_tensor(x, 4, symmetric, axis=0)
        assert torch.equal(spec.zero_point, torch.round(spec.zero_point))
        assert torch.all(spec.dequantize()[x == 0] == 0)


def test_all_zero_and_constant_tensors() -> None:
    zeros = torch.zeros(3, 4)
    for symmetric in (False, True):
        spec = quantize_tensor(zeros, 8, symmetric, axis=0)
        assert torch.all(spec.scale == 1) and torch.isfinite(spec.dequantize()).all()
        assert torch.equal(spec.dequantize(), zeros)
    const = torch.full((2, 5), 0.75)
    spec = quantize_tensor(const, 8, False, axis=None)
    assert float(spec.scale) == pytest.approx(0.75 / 255)
    assert int(spec.zero_point) == 0 and torch.all(spec.q == 255)
    assert torch.allclose(spec.dequantize(), const, rtol=1e-6)
    neg = torch.full((4,), -2.0)
    spec = quantize_tensor(neg, 3, False)
    assert int(spec.zero_point) == 7 and torch.all(spec.q == 0)
    assert torch.allclose(spec.dequantize(), neg, rtol=1e-6)


def test_symmetric_two_bits_is_ternary() -> None:
    x = torch.tensor([-1.0, -0.6, -0.2, 0.0, 0.3, 0.9])
    spec = quantize_tensor(x, 2, symmetric=True)
    assert set(spec.q.tolist()) == {-1, 0, 1}
    assert torch.equal(spec.dequantize(), torch.tensor([-1.0, -1.0, 0.0, 0.0, 0.0, 1.0]))


def test_binary_weights_are_sign_times_channel_mean_abs() -> None:
    w = torch.tensor([[0.5, -1.5, 1.0, 0.0], [-0.2, -0.2, 0.2, 0.6]])
    spec = binarize(w)
    got = spec.dequantize()
    alpha = torch.tensor([0.75, 0.3])
    expected = torch.where(w >= 0, 1.0, -1.0) * alpha.view(-1, 1)
    assert torch.allclose(got, expected, atol=1e-7)
    assert spec.bits == 1 and set(spec.q.unique().tolist()) == {0, 1}
    assert torch.equal(quantize_tensor(w, 1, axis=0).dequantize(), got)


def test_fake_quant_forward_is_quantize_dequantize() -> None:
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    for symmetric, axis in ((False, None), (True, 0), (False, 0)):
        s, z = compute_qparams(x, 5, symmetric, axis)
        expected = dequantize(quantize(x, s, z, 5, symmetric, axis), s, z, axis)
        assert torch.equal(fake_quantize(x, 5, symmetric, axis), expected)


def test_fake_quant_straight_through_gradient_matches_torch() -> None:
    """PyTorch's fake_quantize_per_channel_affine is the referee for forward values and the STE gradient."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 9, generator=g)
    scale = torch.tensor([0.01, 0.02, 0.05, 0.1])  # small scales: part of the values fall outside the range
    zp = torch.tensor([0, 3, -2, 1], dtype=torch.int32)
    ours_x = w.clone().requires_grad_(True)
    ref_x = w.clone().requires_grad_(True)
    ours = fake_quantize(ours_x, 8, symmetric=False, axis=0, scale=scale, zero_point=zp.float() + 128)
    ref = torch.fake_quantize_per_channel_affine(ref_x, scale, zp + 128, 0, 0, 255)
    weight = torch.randn(4, 9, generator=g)
    (ours * weight).sum().backward()
    (ref * weight).sum().backward()
    close = torch.isclose(ours, ref, atol=1e-6)
    assert close.float().mean() >= 0.97  # ties may round differently (x·(1/s) vs x/s); all else identical
    r = torch.round(w / scale.view(-1, 1)) + zp.view(-1, 1)
    clipped = (r < -128) | (r > 127)
    assert clipped.any() and (~clipped).any()
    # identity inside the range (s · (1/s) may differ from 1 by an ulp)
    assert torch.allclose(ours_x.grad[~clipped], weight[~clipped], rtol=1e-6, atol=0)
    assert torch.all(ours_x.grad[clipped] == 0)  # nothing through the clamp
    agree = torch.isclose(ours_x.grad, ref_x.grad, rtol=1e-6, atol=0).float().mean()
    assert agree >= 0.99


@pytest.mark.parametrize("bits, scheme, granularity", [(8, "asymmetric", "per-channel"),
                                                       (4, "symmetric", "per-tensor"),
                                                       (2, "asymmetric", "per-channel"),
                                                       (1, "asymmetric", "per-channel")])
def test_handler_artifact_is_packed_and_loads_back(demo, digits, tmp_path, bits: int, scheme: str,
                                                   granularity: str) -> None:
    model, record, _ = demo
    before = model_hash(model)
    cfg = WeightQuantConfig(bits=bits, scheme=scheme, granularity=granularity)
    res = apply(model, cfg, CompressContext(data=digits, workdir=tmp_path, arch="demo-cnn"))
    assert model_hash(model) == before  # the input model is untouched
    assert res.artifact is not None and res.artifact.is_file() and res.artifact_format == packing.FORMAT
    # every conv/linear weight takes at most 2^b distinct values (per channel)
    for row in res.layers:
        assert row["levels_used"] <= 2**bits
        if bits >= 2:  # the recorded error is real and within s/2
            assert 0 < row["max_abs_error"] <= row["half_step"] * (1 + 1e-5)
    conv = res.model.features[4].weight.detach()
    for c in range(conv.shape[0]):
        assert torch.unique(conv[c]).numel() <= 2**bits
    # the artifact holds b-bit integers: the conv/linear weights take ~b/32 of their fp32 bytes
    rows = {r["name"]: r for r in res.layers}
    fc = rows["classifier.2"]
    n = model.classifier[2].weight.numel()
    assert fc["stored_bytes"] <= n * bits / 8 + 8 * model.classifier[2].out_features + 8
    # load back into a fresh model: identical predictions
    state, meta = packing.load_packed(res.artifact)
    assert meta["arch"] == "demo-cnn"
    c, h, w = digits.input_shape
    fresh = load_into(create_model("demo-cnn", c, digits.num_classes, (h, w)), state)
    x, _ = digits.tensors("test")
    with torch.no_grad():
        assert torch.equal(fresh(x), res.model(x))
    acc = evaluate(res.model, digits, "test").accuracy
    if bits == 8:
        assert acc >= record.accuracy - 0.01
    elif bits >= 4:
        assert acc >= record.accuracy - 0.05
    else:
        assert acc > 1.5 / digits.num_classes or bits == 1  # 2 bit still works; binary may not


def test_packed_size_shrinks_with_bits(demo, digits, tmp_path) -> None:
    model, _, _ = demo
    sizes = {}
    for bits in (8, 4, 2):
        res = apply(model, WeightQuantConfig(bits=bits), CompressContext(data=digits, workdir=tmp_path / str(bits)))
        sizes[bits] = res.artifact.stat().st_size
    n_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert sizes[8] < n_weights * 1.2  # ~1 byte per weight (plus BN, biases, scales)
    assert sizes[4] < 0.6 * sizes[8] and sizes[2] < 0.65 * sizes[4]


@pytest.mark.parametrize("kwargs", [{"bits": 9}, {"bits": 0}, {"scheme": "weird"}, {"granularity": "per-row"}])
def test_config_rejects_absurd_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WeightQuantConfig(**kwargs)
