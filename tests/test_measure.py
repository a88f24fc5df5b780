"""Evaluation pass against a plain loop; parameters, MACs and sizes against hand-computed values."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from nnlab.evaluate import evaluate
from nnlab.measure import count_macs, count_parameters, file_sizes, layer_table, measure_latency
from nnlab.records import Record


def tiny_net() -> nn.Module:
    # conv 1->2, 3x3, no padding on 5x5 -> 2x3x3 ; flatten 18 -> linear 3
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))


def test_params_and_macs_hand_computed():
    m = tiny_net()
    with torch.no_grad():
        m[0].weight[0].zero_()
    total, nonzero = count_parameters(m)
    assert total == 2 * 9 + 2 + 18 * 3 + 3 == 77
    assert nonzero == 77 - 9
    # conv: 2 out channels * 3*3 positions * 9 MACs = 162; linear: 18*3 = 54
    assert count_macs(m, (1, 5, 5)) == 162 + 54


def test_layer_table_shapes():
    rows = layer_table(tiny_net(), (1, 5, 5))
    assert [r["type"] for r in rows] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    assert rows[0]["output_shape"] == "(2, 3, 3)" and rows[3]["params"] == 57


def test_file_sizes(tmp_path):
    p = tmp_path / "f.bin"
    payload = b"a" * 10000
    p.write_bytes(payload)
    size, gz = file_sizes(p)
    assert size == 10000 and gz == len(gzip.compress(payload, 9, mtime=0)) and gz < 100


def test_latency_is_recorded_with_threads():
    lat = measure_latency(tiny_net(), (1, 5, 5), (1, 4), threads=1, rounds=2)
    assert set(lat) == {1, 4}
    assert lat[1].threads == 1 and lat[1].repeats >= 5
    assert 0 < lat[1].min_ms <= lat[1].median_ms <= lat[1].p90_ms
    assert torch.get_num_threads() == 2  # restored (conftest sets 2)


def test_evaluation_pass_equals_plain_loop(digits, demo):
    model = demo[0]
    ev = evaluate(model, digits, "test", batch_size=37)
    with torch.no_grad():
        logits = torch.cat([model(digits.normalize(digits.x_test[i:i + 1])) for i in range(len(digits.y_test))])
    assert np.allclose(ev.logits, logits.numpy(), atol=1e-4)
    y = digits.y_test
    assert np.array_equal(ev.preds, logits.argmax(1).numpy())
    assert np.allclose(ev.losses, nn.functional.cross_entropy(logits, y, reduction="none").numpy(), atol=1e-4)
    assert np.allclose(ev.probs.sum(1), 1, atol=1e-5)
    assert ev.accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert ev.accuracy > 0.9  # the digits demo really learned


def test_record_roundtrips_through_json():
    r = Record(id="x", name="X", method="base", accuracy=0.9, train_accuracy=float("nan"),
               latency={"1": {"median_ms": 1.5}}, layers=[{"name": "a", "sparsity": 0.5}], config={"k": [1, 2]},
               params=10, nonzero_params=4)
    text = r.to_json()
    json.loads(text)  # strict JSON: NaN is encoded, not emitted raw
    back = Record.from_json(text)
    assert back.accuracy == 0.9 and math.isnan(back.train_accuracy)
    assert back.latency_ms(1) == 1.5 and back.sparsity == pytest.approx(0.6)
    back.train_accuracy = r.train_accuracy = 0.0
    assert back == r
    with pytest.raises(ValueError, match="lacks"):
        Record.from_dict({"name": "no id"})


def test_demo_record_is_complete(demo, digits):
    model, rec, history = demo
    assert rec.method == "base" and rec.dataset == "digits" and rec.arch == "demo-cnn"
    assert rec.accuracy > 0.9 and rec.size_bytes > rec.params * 4 * 0.9 and rec.size_gzip_bytes < rec.size_bytes
    assert rec.macs == count_macs(model, digits.input_shape) and rec.macs > 0
    assert rec.latency["1"]["median_ms"] > 0 and rec.latency["32"]["threads"] >= 1
    assert len(history) >= 3 and {"train_acc", "test_acc", "train_loss", "test_loss"} <= set(history[0])
