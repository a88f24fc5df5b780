"""The compression registry, variants and the packed format: parametrized over every registered method."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest
import torch

import compression  # noqa: F401 - registers the methods
from compression import packing
from compression.registry import (
    HANDLERS,
    METHODS,
    CompressContext,
    CompressResult,
    MethodConfig,
    apply,
    apply_pipeline,
    check_range,
    config_from_dict,
    config_from_strings,
    list_methods,
    register,
)
from compression.variant import load_variant_model, make_variant, write_default_artifact
from nnlab.evaluate import evaluate
from nnlab.models.registry import create_model, load_into, model_hash
from nnlab.records import Record
from nnlab.train import Cancelled
from nnlab.workspace import Workspace, load_state_dict

# Fast settings per method; a method added later gets its defaults with epoch-like fields at their minimum.
FAST = {
    "prune-unstructured": {"sparsity": 0.6},
    "prune-channels": {"amount": 0.5},
    "prune-iterative": {"rounds": 1, "fraction": 0.3, "epochs": 1},
    "cluster": {"k": 8},
    "distill": {"epochs": 1, "subset": 256},
}


def fast_config(cls: type[MethodConfig]) -> MethodConfig:
    if cls.method in FAST:
        return cls.from_dict(FAST[cls.method])
    changes = {}
    for fi in cls.fields_info():
        if "epoch" in fi.name and fi.type == "int":
            changes[fi.name] = int(fi.min) if fi.min is not None and fi.min > 0 else (1 if fi.default else 0)
        if ("calib" in fi.name or "samples" in fi.name) and fi.type == "int":
            changes[fi.name] = max(int(fi.min or 1), min(64, int(fi.default)))
    return cls(**changes) if changes else cls()


@pytest.fixture()
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.mark.parametrize("cls", list_methods(), ids=lambda c: c.method)
def test_every_method_makes_a_new_measured_variant(cls, demo, digits, ws):
    model, record, _ = demo
    before = model_hash(model)
    cfg = fast_config(cls)
    rec = make_variant(model, record.id, "demo-cnn", [cfg], digits, ws, latency_repeats=3)
    assert model_hash(model) == before, "the input model changed"
    # the record round-trips through JSON and is what the workspace stores
    assert Record.from_json(rec.to_json()).to_dict() == rec.to_dict()
    assert ws.load_variant(rec.id).to_dict() == rec.to_dict()
    assert rec.method == cls.method and rec.parent == record.id and rec.config == cfg.to_dict()
    assert 0.0 <= rec.accuracy <= 1.0 and len(rec.per_class_accuracy) == 10
    artifact = ws.root / rec.artifact
    assert artifact.is_file() and rec.size_bytes == artifact.stat().st_size > 0
    assert 0 < rec.size_gzip_bytes and rec.size_dense_bytes > 0
    assert set(rec.latency) == {"1", "32"} and rec.latency["1"]["median_ms"] > 0
    assert rec.macs > 0 and 0 < rec.nonzero_params <= rec.params
    if rec.artifact_format in ("safetensors", packing.FORMAT):  # the stored artifact predicts like the record
        reloaded = load_variant_model(ws, rec)
        assert evaluate(reloaded, digits).accuracy == pytest.approx(rec.accuracy, abs=1e-9)


@pytest.mark.parametrize("cls", list_methods(), ids=lambda c: c.method)
def test_apply_returns_a_new_model_and_leaves_the_input(cls, digits, tmp_path):
    torch.manual_seed(0)
    model = create_model("demo-cnn", 1, 10, (8, 8)).eval()
    before = model_hash(model)
    res = apply(model, fast_config(cls), CompressContext(data=digits, workdir=tmp_path))
    assert model_hash(model) == before
    assert res.model is not model
    own = {p.data_ptr() for p in model.parameters()}
    assert not own & {p.data_ptr() for p in res.model.parameters()}, "the result shares tensors with the input"
    assert res.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("cls", list_methods(), ids=lambda c: c.method)
def test_config_round_trip(cls):
    cfg = cls()
    d = cfg.to_dict()
    assert d["method"] == cls.method
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    assert all(fi.help for fi in cls.fields_info()), "every field needs a one-line help"
    with pytest.raises(ValueError, match="unknown parameter"):
        config_from_dict({**d, "no_such_field": 1})


@pytest.mark.parametrize("method, bad", [
    ("prune-unstructured", {"sparsity": 1.5}), ("prune-unstructured", {"sparsity": -0.1}),
    ("prune-unstructured", {"scope": "everywhere"}), ("prune-channels", {"amount": 0.99}),
    ("prune-channels", {"norm": "l3"}), ("prune-iterative", {"rounds": 0}),
    ("prune-iterative", {"rounds": 30, "fraction": 0.9}), ("prune-iterative", {"structure": "channels", "rewind": True}),
    ("cluster", {"k": 1}), ("cluster", {"k": 300}), ("cluster", {"init": "random"}),
    ("distill", {"tau": 0}), ("distill", {"alpha": 0, "beta": 0}), ("distill", {"student": "no-such-net"}),
])
def test_absurd_values_are_refused_with_a_message(method, bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        config_from_dict({"method": method, **bad})


def test_config_from_strings_coerces_types():
    cfg = config_from_strings("prune-unstructured", ["sparsity=0.25", "scope=global", "finetune_epochs=2"])
    assert (cfg.sparsity, cfg.scope, cfg.finetune_epochs) == (0.25, "global", 2)
    with pytest.raises(ValueError, match="cannot read"):
        config_from_strings("prune-unstructured", ["sparsity=lots"])
    with pytest.raises(ValueError, match="unknown method"):
        config_from_dict({"method": "shrink-it"})


def test_pipeline_merges_layers_and_names_steps(demo, digits, ws):
    model, record, _ = demo
    cfgs = [config_from_dict({"method": "prune-unstructured", "sparsity": 0.7, "scope": "global"}),
            config_from_dict({"method": "cluster", "k": 4})]
    rec = make_variant(model, record.id, "demo-cnn", cfgs, digits, ws, latency_repeats=3)
    assert rec.method == "prune-unstructured+cluster"
    assert [s["method"] for s in rec.config["steps"]] == ["prune-unstructured", "cluster"]
    row = next(r for r in rec.layers if r["name"] == "features.4")
    assert row["clusters"] == 4 and row["sparsity"] == pytest.approx(row["weight_sparsity"], abs=1e-9)
    assert rec.sparsity > 0.6
    assert rec.artifact_format == packing.FORMAT
    # 70 % zeros and 2-bit indices: far smaller than dense fp32
    assert rec.size_bytes < 0.15 * rec.size_dense_bytes
    assert not list((ws.variant_dir(rec.id)).glob(".step*")), "intermediate step folders must be removed"


def test_cancel_leaves_nothing_behind(demo, digits, ws):
    model, record, _ = demo
    cfg = config_from_dict({"method": "distill", "epochs": 3, "subset": 256})
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        make_variant(model, record.id, "demo-cnn", [cfg], digits, ws, cancel=cancel, variant_id="v-cancelled")
    assert not ws.variant_dir("v-cancelled").exists()
    assert ws.list_variants() == []


@dataclass(frozen=True)
class _Broken(MethodConfig):
    method: ClassVar[str] = "test-broken"
    label: ClassVar[str] = "broken (test)"
    level: float = field(default=0.5, metadata={"help": "level"})

    def __post_init__(self) -> None:
        check_range(self, "level", 0, 1)


def test_a_failing_handler_leaves_no_record(demo, digits, ws):
    model, record, _ = demo

    def handler(m, cfg, ctx) -> CompressResult:
        (ctx.workdir / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("boom")

    register(_Broken)(handler)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            make_variant(model, record.id, "demo-cnn", [_Broken()], digits, ws, variant_id="v-broken")
    finally:
        METHODS.pop("test-broken", None)
        HANDLERS.pop(_Broken, None)
    assert not ws.variant_dir("v-broken").exists()


def test_progress_is_monotone_and_ends_at_one(demo, digits, ws):
    model, record, _ = demo
    seen: list[float] = []
    cfg = config_from_dict({"method": "prune-unstructured", "sparsity": 0.5, "finetune_epochs": 2})
    make_variant(model, record.id, "demo-cnn", [cfg], digits, ws, progress=lambda m, f: seen.append(f),
                 latency_repeats=3)
    assert seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:])), "progress went backwards"


def test_pipeline_of_one_equals_apply(digits, tmp_path):
    torch.manual_seed(1)
    model = create_model("demo-cnn", 1, 10, (8, 8)).eval()
    cfg = config_from_dict({"method": "prune-unstructured", "sparsity": 0.5})
    a = apply(model, cfg, CompressContext(data=digits, workdir=tmp_path / "a"))
    b = apply_pipeline(model, [cfg], CompressContext(data=digits, workdir=tmp_path / "b"))
    assert model_hash(a.model) == model_hash(b.model)


# --- packed format ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 12])
def test_bit_packing_round_trip_and_size(bits):
    v = np.random.default_rng(bits).integers(0, 2 ** bits, 1001)
    data = packing.pack_bits(v, bits)
    assert len(data) == (1001 * bits + 7) // 8
    assert np.array_equal(packing.unpack_bits(data, bits, 1001), v)


def test_packed_encodings_decode_exactly_and_are_small():
    g = torch.Generator().manual_seed(0)
    sparse = torch.randn(64, 64, 3, 3, generator=g)
    sparse[sparse.abs() < 1.645] = 0  # ~90 % zeros
    centroids = torch.tensor([-0.3, -0.1, 0.05, 0.2])
    clustered = centroids[torch.randint(0, 4, (128, 256), generator=g)]
    state = {"sparse": sparse, "clustered": clustered, "bias": torch.randn(64, generator=g),
             "count": torch.tensor(7), "half": torch.randn(5, generator=g).half()}
    data, rows = packing.pack_state(state)
    back, _ = packing.unpack_state(data)
    for k, t in state.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    enc = {r["name"]: r for r in rows}
    assert enc["sparse"]["encoding"] == "sparse" and enc["clustered"]["encoding"] == "clustered"
    n = sparse.numel()
    nnz = int((sparse != 0).sum())
    positions = packing.encode_positions((sparse != 0).reshape(-1).numpy())[1]
    assert len(positions) < 0.6 * (n + 7) // 8  # run lengths beat a bitmask at 90 % zeros
    assert enc["sparse"]["bytes"] == len(positions) + 4 * nnz  # positions + fp32 nonzeros
    assert enc["clustered"]["bytes"] == 4 * 4 + (clustered.numel() * 2 + 7) // 8  # 4 centroids + 2-bit indices


@pytest.mark.parametrize("density", [0.0, 0.002, 0.05, 0.3, 1.0])
def test_run_length_positions_round_trip_with_fillers(density):
    g = np.random.default_rng(1)
    for n in (1, 9, 3000):
        mask = g.random(n) < density
        for bits in range(2, 9):
            codes = packing.encode_gaps(mask, bits)
            assert np.array_equal(packing.decode_gaps(codes, bits, n), mask)
            # one code per element plus one filler per full run of 2^bits − 1 zeros
            pos = np.flatnonzero(mask)
            gaps = np.diff(np.r_[-1, pos]) - 1
            assert len(codes) == len(pos) + int((gaps // (2 ** bits - 1)).sum())
        head, blob = packing.encode_positions(mask)
        assert np.array_equal(packing.decode_positions(head, blob, n), mask)
        assert len(blob) <= (n + 7) // 8


def test_quantized_entries_dequantize_as_algorithm_3():
    q = torch.randint(-8, 8, (6, 5))
    spec = packing.QuantSpec(q, torch.rand(6) + 0.1, torch.randint(-2, 3, (6,)).float(), bits=4, axis=0, qmin=-8)
    data, rows = packing.pack_state({"w": spec.dequantize()}, {"w": spec})
    back, _ = packing.unpack_state(data)
    expected = spec.scale.view(6, 1) * (q.float() - spec.zero_point.view(6, 1))
    assert torch.allclose(back["w"], expected, atol=0, rtol=0)
    assert rows[0]["bytes"] == (30 * 4 + 7) // 8 + 6 * 4 * 2


def test_channel_pruned_and_sparse_models_reload_with_identical_predictions(demo, digits, tmp_path):
    model, _, _ = demo
    x, _ = digits.tensors("test")
    for i, cfgs in enumerate(([{"method": "prune-channels", "amount": 0.5}],
                              [{"method": "prune-unstructured", "sparsity": 0.9, "scope": "global"},
                               {"method": "cluster", "k": 16}])):
        configs = [config_from_dict(c) for c in cfgs]
        compressed = apply_pipeline(model, configs, CompressContext(data=digits, workdir=tmp_path / f"w{i}")).model
        path, fmt, _ = write_default_artifact(compressed, tmp_path / f"w{i}", {"arch": "demo-cnn"})
        state = packing.load_packed(path)[0] if fmt == packing.FORMAT else load_state_dict(path)
        reloaded = create_model("demo-cnn", 1, 10, (8, 8))
        load_into(packing.fit_modules_to_state(reloaded, state), state)
        with torch.no_grad():
            assert torch.equal(reloaded(x).argmax(1), compressed(x).argmax(1))
            assert torch.equal(reloaded(x), compressed(x))
        assert fmt == ("safetensors" if i == 0 else packing.FORMAT)


def test_fit_modules_to_state_rebuilds_a_shrunk_model():
    big = create_model("demo-cnn", 1, 10, (8, 8))
    small = create_model("demo-cnn", 1, 10, (8, 8))
    state = {k: (v[: v.shape[0] // 2] if v.ndim >= 1 and k.startswith(("features.0.", "features.1.")) else v)
             for k, v in small.state_dict().items()}
    state["features.4.weight"] = state["features.4.weight"][:, :16]
    packing.fit_modules_to_state(big, state)
    big.load_state_dict(state)
    assert big.features[0].out_channels == 16 and big.features[1].num_features == 16
    assert big.features[4].in_channels == 16
    assert big(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_deepcopy_guard_even_when_handler_mutates(digits, tmp_path):
    torch.manual_seed(2)
    model = create_model("demo-cnn", 1, 10, (8, 8))
    snapshot = copy.deepcopy(model.state_dict())
    apply(model, config_from_dict({"method": "prune-channels", "amount": 0.5}),
          CompressContext(data=digits, workdir=tmp_path))
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())
    assert model.features[0].out_channels == 32


def test_every_method_module_imports_and_registers():

    assert compression.IMPORT_ERRORS == {}
    assert {"prune-unstructured", "prune-channels", "prune-iterative", "cluster", "distill", "quantize-weights",
            "int8", "qat", "half"} <= set(compression.METHODS)
