"""Hardening, table-driven: absurd compression parameters are rejected by validation with a clear message,
before anything runs, and nothing is written to the workspace (never half-applied)."""

from __future__ import annotations

import pytest
import torch

import compression  # noqa: F401  (registers the methods)
from compression.registry import config_from_dict
from compression.variant import make_variant
from nnlab.models.registry import create_model, model_hash
from nnlab.workspace import Workspace

BAD_CONFIGS = [
    ({"method": "prune-unstructured", "sparsity": 1.0}, "sparsity"),
    ({"method": "prune-unstructured", "sparsity": 1.5}, "sparsity"),
    ({"method": "prune-unstructured", "sparsity": -0.1}, "sparsity"),
    ({"method": "prune-channels", "amount": 0.99}, "amount"),
    ({"method": "prune-iterative", "rounds": 0}, "rounds"),
    ({"method": "quantize-weights", "bits": 0}, "bits"),
    ({"method": "quantize-weights", "bits": 33}, "bits"),
    ({"method": "cluster", "k": 1}, "k"),
    ({"method": "cluster", "k": 100000}, "k"),
    ({"method": "distill", "tau": 0.0}, "tau"),
    ({"method": "distill", "tau": -2.0}, "tau"),
    ({"method": "distill", "alpha": 0.0, "beta": 0.0}, "positive"),
    ({"method": "int8", "calibration_samples": 0}, "calibration_samples"),
    ({"method": "qat", "calibration_samples": 0}, "calibration_samples"),
    ({"method": "no-such-method"}, "no-such-method"),
]


@pytest.mark.parametrize("cfg, word", BAD_CONFIGS, ids=[str(c) for c, _ in BAD_CONFIGS])
def test_absurd_parameters_are_rejected_by_validation(cfg, word):
    with pytest.raises((ValueError, KeyError)) as info:
        config_from_dict(cfg)
    assert word in str(info.value)


def test_k_above_the_number_of_weights_is_refused_and_nothing_is_written(tiny_data, tmp_path):
    model = create_model("demo-cnn-small", 1, 3, (8, 8))  # its first conv has 72 weights
    before = model_hash(model)
    ws = Workspace(tmp_path)
    with pytest.raises(ValueError, match=r"k=128 is more than the 72 weights of layer features\.0"):
        make_variant(model, "base", "demo-cnn-small", [config_from_dict({"method": "cluster", "k": 128})],
                     tiny_data, ws)
    assert model_hash(model) == before
    assert ws.list_variants() == [] and not any((tmp_path / "variants").glob("*"))


def test_failing_pipeline_step_is_never_half_applied(tiny_data, tmp_path):
    """A two-step pipeline whose second step fails leaves no variant (not even the first step's)."""
    model = create_model("demo-cnn-small", 1, 3, (8, 8))
    ws = Workspace(tmp_path)
    steps = [config_from_dict({"method": "prune-unstructured", "sparsity": 0.5}),
             config_from_dict({"method": "cluster", "k": 200})]
    with pytest.raises(ValueError, match="more than the 72 weights"):
        make_variant(model, "base", "demo-cnn-small", steps, tiny_data, ws)
    assert ws.list_variants() == [] and not any((tmp_path / "variants").glob("*"))
    assert float((model.features[0].weight == 0).float().mean()) == 0.0
    assert torch.isfinite(model.features[0].weight).all()
