"""Honest numbers (issue 20): one measurement path, the base in every runtime, speed-ups in the same runtime."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from compression import pareto
from compression.registry import config_from_dict
from compression.variant import make_variant, remeasure_variant
from nnlab import measure
from nnlab.base import profile_model
from nnlab.data.sets import ImageDataset
from nnlab.models.registry import create_model
from nnlab.runtimes.candidates import engine_of, fp32_factories, same_runtime_factory
from nnlab.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
CPU_RUNTIMES = {"pytorch-eager-fp32-cpu", "onnxruntime-fp32-cpu", "openvino-fp32-cpu"}


@pytest.fixture(scope="module")
def rgb64() -> ImageDataset:
    """Random RGB 64×64 images, 4 classes: a model big enough (a few ms) for latency ratios to be stable."""
    g = np.random.default_rng(0)
    x = torch.from_numpy(g.integers(0, 256, size=(48, 3, 64, 64), dtype=np.uint8))
    y = torch.from_numpy((np.arange(48) % 4).astype(np.int64))
    return ImageDataset(id="rgb64", name="rgb64", source="generated", classes=list("abcd"), x_train=x, y_train=y,
                        x_test=x[:24].clone(), y_test=y[:24].clone())


@pytest.fixture(scope="module")
def base_and_int8(rgb64, tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("honest"))
    model = create_model("tv:resnet18", 3, 4, (64, 64), seed=0).eval()
    base = profile_model(model, rgb64, "r18-64", "ResNet-18 64 px", "tv:resnet18", None)
    ws.save_model("r18-64", model.state_dict())
    ws.save_model_record("r18-64", base)
    v = make_variant(model, base.id, "tv:resnet18", [config_from_dict({"method": "int8"})], rgb64, ws)
    return ws, model, base, v


def _check_latency(lat: dict, batch: str) -> None:
    assert lat["harness"] == measure.HARNESS and lat["threads"] >= 1 and lat["runtime"]
    # every round times each runtime calls_per_round(batch) times (the suite runs 2 rounds: NNLAB_LATENCY_ROUNDS)
    assert lat["precision"] and lat["batch"] == int(batch) and lat["rounds"] >= 2
    assert lat["repeats"] == lat["rounds"] * measure.calls_per_round(int(batch))
    assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"]


@pytest.mark.slow
def test_base_is_timed_as_fp32_in_every_runtime_here(base_and_int8):
    _, _, base, _ = base_and_int8
    assert CPU_RUNTIMES <= set(base.latencies), base.extra["runtime_figures"]
    for rt, by_batch in base.latencies.items():
        assert set(by_batch) == {"1", "32"}
        for b, lat in by_batch.items():
            _check_latency(lat, b)
            assert lat["runtime"] == rt and lat["precision"] == "fp32"
    for b in ("1", "32"):  # the record's own latency is the fastest runtime's
        assert base.latency[b]["median_ms"] == min(x[b]["median_ms"] for x in base.latencies.values())
    assert measure.comparable(base) and base.size_gzip_bytes > 0


@pytest.mark.slow
def test_variant_is_timed_beside_its_base_in_its_own_runtime(base_and_int8):
    _, _, base, v = base_and_int8
    for b, lat in v.latency.items():
        _check_latency(lat, b)
    assert v.latency["1"]["precision"] == "int8"
    assert engine_of(v.baseline["runtime"]) == engine_of(v.latency["1"]["runtime"])  # same runtime, fp32
    assert v.baseline["latency"]["1"]["precision"] == "fp32" and v.baseline["parent"] == base.id
    recorded = measure.speedups(v, base, 1)
    assert recorded["same_runtime"] == pytest.approx(v.baseline["latency"]["1"]["median_ms"] / v.latency_ms(1))
    rt, fastest = measure.fastest_fp32(base, 1)
    assert recorded["vs_fastest_fp32"] == pytest.approx(fastest / v.latency_ms(1)) and rt in base.latencies
    assert v.baseline["latency"]["1"]["rounds"] == v.latency["1"]["rounds"]  # timed in the same run


class _Sleeper(torch.nn.Module):
    """A model whose forward takes ``ms`` milliseconds whatever its input: latency ratios known in advance."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms, self.fc = ms, torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(self.ms / 1000)
        return self.fc(x.mean((2, 3)))


def test_recorded_speedup_equals_the_ratio_of_one_interleaved_run():
    from nnlab.runtimes.torch_eager import TorchRunner

    # 20 ms against 60 ms: a sleep's overshoot on a busy machine (a fraction of a millisecond) stays small beside it
    variant = TorchRunner(_Sleeper(20.0), 1, "pytorch-eager-int8-cpu")
    lat, baseline = measure.against_base(variant, _Sleeper(60.0), (3, 4, 4), (1,), rounds=3)
    assert baseline["runtime"] == "pytorch-eager-fp32-cpu"  # the base in the variant's runtime
    rec = dataclasses.replace(_record_like(), latency=measure.latency_dicts(lat), baseline=baseline, parent="b")
    recorded = measure.speedups(rec, None, 1)["same_runtime"]
    x = np.zeros((1, 3, 4, 4), np.float32)
    fresh = measure.interleaved_latency({"v": variant, "b": TorchRunner(_Sleeper(60.0), 1)}, x, rounds=3)
    assert recorded == pytest.approx(fresh["b"].median_ms / fresh["v"].median_ms, rel=0.10)
    assert recorded == pytest.approx(3.0, rel=0.15)


def _record_like():
    from nnlab.records import Record

    return Record(id="v", name="v", method="int8")


@pytest.mark.slow
def test_pareto_shows_the_base_once_per_runtime_and_leaves_stale_records_off_latency(base_and_int8):
    ws, model, base, v = base_and_int8
    stale = dataclasses.replace(v, id="old", latency={k: {kk: vv for kk, vv in lat.items() if kk != "harness"}
                                                      for k, lat in v.latency.items()})
    fig = pareto.pareto_figure([base, v, stale], "latency", base_id=base.id)
    ids = [cd[0] for tr in fig.data if tr.customdata is not None for cd in tr.customdata]
    assert ids.count(base.id) == len(base.latencies) and "old" not in ids and v.id in ids
    size_ids = [cd[0] for tr in pareto.pareto_figure([base, v, stale], "size", base_id=base.id).data
                if tr.customdata is not None for cd in tr.customdata]
    assert size_ids.count(base.id) == 1 and "old" in size_ids  # size is comparable whatever the harness
    assert [r.id for r in pareto.stale([base, v, stale])] == ["old"]
    rows = {r["id"]: r for r in pareto.summary_rows([base, v, stale], base)}
    assert rows[v.id][pareto.SPEEDUP_SAME] == pytest.approx(measure.speedups(v, base)["same_runtime"])
    assert np.isnan(rows["old"][pareto.SPEEDUP_SAME]) and np.isnan(rows["old"]["latency b1 (ms)"])
    again = remeasure_variant(ws, stale, model)  # measured again: comparable, its base beside it
    assert measure.comparable(again) and again.baseline["runtime"] == v.baseline["runtime"]


def test_same_runtime_factory_builds_the_base_in_the_variants_engine(rgb64):
    model = create_model("demo-cnn", 3, 4, (64, 64)).eval()
    for runtime, want in (("openvino-int8-cpu", "openvino-fp32-cpu"), ("onnxruntime-int8-static-cpu",
                                                                         "onnxruntime-fp32-cpu"),
                          ("pytorch-fx-int8-static-cpu", "pytorch-eager-fp32-cpu"),
                          ("pytorch-eager-cpu-bf16", "pytorch-eager-fp32-cpu")):
        name, factory = same_runtime_factory(runtime, model, rgb64.input_shape, 1)
        assert factory().runtime == want, runtime
    assert set(fp32_factories(model, rgb64.input_shape, 1)) == {"pytorch", "onnxruntime", "openvino"}


def test_every_model_and_variant_has_a_nonzero_gzip_size(demo, digits, tmp_path):
    model, rec, _ = demo
    assert rec.size_bytes > 0 and 0 < rec.size_gzip_bytes
    in_memory = profile_model(model, digits, "mem", "in memory", "demo-cnn", None)  # no artifact yet
    assert in_memory.size_bytes > 0 and 0 < in_memory.size_gzip_bytes < 2 * in_memory.size_bytes
    v = make_variant(model, rec.id, rec.arch, [config_from_dict({"method": "prune-unstructured", "sparsity": 0.5})],
                     digits, Workspace(tmp_path))
    assert v.size_gzip_bytes > 0 and measure.comparable(v)


def test_a_small_evaluation_pass_uses_the_runtime_measured_for_the_model(demo, digits, tmp_path):
    from nnlab.jobs.kinds import ensure_evaluation, runtime_key

    model, rec, _ = demo
    ws = Workspace(tmp_path)
    lats = {rt: {b: dict(v, median_ms=(1.0 if rt == "onnxruntime-fp32-cpu" else 9.0)) for b, v in by.items()}
            for rt, by in rec.latencies.items()}  # ONNX Runtime measured fastest for this model
    ws.save_model("m", model.state_dict())
    ws.save_model_record("m", dataclasses.replace(rec, id="m", latencies=lats))
    res = ensure_evaluation(ws, "m", model, digits, "test")  # 450 images: far below the old 5,000 floor
    used = ws.load_run(runtime_key("m", digits.id, "test"))
    assert used["runtime"] == "onnxruntime-fp32-cpu", used["summary"]
    assert "measured fastest for this model" in used["summary"]
    assert res.accuracy == pytest.approx(rec.accuracy, abs=1e-9)


# Files that read a clock: each is a progress clock, a duration of a whole job, or a unique file name; none
# times a model call (that is nnlab/measure.py's alone). A new entry needs a reason here.
CLOCK_ALLOWED = {
    "nnlab/measure.py": "THE measurement module",
    "nnlab/base.py": "training duration of the demo model",
    "nnlab/train.py": "epoch duration for the history",
    "nnlab/jobs/kinds.py": "training duration of a trained model",
    "nnlab/jobs/manager.py": "progress rate and time left",
    "nnlab/evaluate.py": "seconds to a streamed pass's first number, and fp32 against bf16 on its first sample "
                         "(which runtime does the rest; shown as the pass's own throughput, not as a latency)",
    "nnlab/jobs/engine.py": "piece durations, polling and cancel grace",
    "nnlab/data/_cachebuild.py": "decode progress and commit intervals",
    "nnlab/data/cache.py": "unique names of deleted folders",
    "nnlab/workspace.py": "unique temporary file names",
    "nnlab/runtimes/openvino.py": "unique temporary file names",
    "compression/variant.py": "duration of applying a pipeline",
    "compression/pruning.py": "duration and time budget of iterative pruning",
    "diagnostics/datacheck.py": "duration of the data checks",
    "diagnostics/curves.py": "duration of each learning-curve point",
    "diagnostics/tasks.py": "duration of building a report",
}


def _clock_users() -> set[str]:
    out = set()
    for folder in ("nnlab", "compression", "diagnostics", "pages"):
        for p in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Attribute) and node.attr in ("perf_counter", "monotonic", "monotonic_ns",
                                                                      "perf_counter_ns", "process_time")):
                    out.add(str(p.relative_to(ROOT)))
    return out


def test_only_the_measurement_module_times_model_calls():
    users = _clock_users()
    assert users <= set(CLOCK_ALLOWED), f"reads a clock without a reason in CLOCK_ALLOWED: {users - set(CLOCK_ALLOWED)}"
    assert "nnlab/measure.py" in users
    text = (ROOT / "nnlab/measure.py").read_text()
    assert text.count("time.perf_counter()") == 2  # the one timed section of the one harness
