"""Runtimes: OpenVINO fp32 and NNCF int8 against PyTorch, the IR in a fresh process, the selector, round_to."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compression.int8 import OPENVINO_FORMAT, Int8Config, RuntimeModule, load_openvino_int8, to_int8
from compression.pruning import PruneChannelsConfig, channel_prune, resolve_round_to
from compression.registry import CompressContext, apply
from nnlab.data.sets import ImageDataset
from nnlab.measure import artifact_sizes, interleaved_latency
from nnlab.models.registry import DemoCNN, create_model, model_hash
from nnlab.runtimes import openvino as ovr
from nnlab.runtimes import select as sel
from nnlab.runtimes.base import agreement, simd_width, top1_agreement
from nnlab.runtimes.torch_eager import TorchRunner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fp32(demo, digits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test inputs, PyTorch fp32 logits and labels of the demo model on digits."""
    model, _, _ = demo
    x, y = digits.tensors("test")
    with torch.no_grad():
        return x.numpy(), model.eval()(x).numpy(), y.numpy()


@pytest.fixture(scope="module")
def ov_int8(demo, digits, tmp_path_factory):
    model, _, _ = demo
    before = model_hash(model)
    res = apply(model, Int8Config(backend="openvino", calibration_samples=256, threads=1),
                CompressContext(data=digits, workdir=tmp_path_factory.mktemp("ov"), arch="demo-cnn"))
    assert model_hash(model) == before
    return res


class FixedRunner:
    """A runner returning preset logits (for exact checks of the helpers)."""

    runtime = "fixed"
    threads = 1

    def __init__(self, out: np.ndarray) -> None:
        self.out = out

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        return self.out


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_agreement_exact_values() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    # row 0 keeps its argmax, row 1 flips; the largest difference is 1.5
    runner = FixedRunner(np.array([[1.5, 0.0], [1.0, -0.5]], np.float32))
    assert agreement(runner, Identity(), x) == (0.5, 1.5)
    assert agreement(FixedRunner(x.copy()), Identity(), x) == (1.0, 0.0)
    assert agreement(FixedRunner(np.zeros((3, 2), np.float32)), Identity(), x) == (0.0, float("inf"))


def test_interleaved_latency_lets_each_runner_start_on_settled_cores() -> None:
    """Round-robin order, per_round calls per turn, and a pause of settle_s before every turn (so spinning
    threads of the runner before cannot take the cores of the next one)."""
    import time

    calls: list[tuple[str, float, float]] = []

    class Logged(FixedRunner):
        def __init__(self, name: str) -> None:
            super().__init__(np.zeros((1, 2), np.float32))
            self.name = name

        def predict_logits(self, x: np.ndarray) -> np.ndarray:
            t0 = time.perf_counter()
            calls.append((self.name, t0, time.perf_counter()))
            return self.out

    class Prepared(Logged):
        def prepare(self, shape: tuple[int, ...]) -> bool:
            calls.append((f"prepare {self.name} {tuple(shape)}", 0.0, 0.0))
            return True

    lat = interleaved_latency({"a": Prepared("a"), "b": Logged("b")}, np.zeros((1, 2), np.float32), rounds=2,
                              per_round=3, warmup=1, settle_s=0.03)
    assert [c[0] for c in calls[:3]] == ["prepare a (1, 2)", "a", "b"]  # prepared for the shape, then warmed up
    timed = calls[3:]  # after one warm-up call each
    assert [c[0] for c in timed] == list("aaabbbaaabbb")
    assert lat["a"].repeats == lat["b"].repeats == 6
    turns = [i for i in range(1, len(timed)) if timed[i][0] != timed[i - 1][0]]
    assert turns == [3, 6, 9] and all(timed[i][1] - timed[i - 1][2] >= 0.03 for i in turns)


def test_openvino_fp32_logits_match_pytorch(demo, fp32) -> None:
    model, _, _ = demo
    x, ref, _ = fp32
    runner = ovr.OpenVINORunner(ovr.convert(model, (1, 8, 8)), threads=1)
    out = runner.predict_logits(x)
    assert runner.runtime == "openvino-f32-cpu" and runner.threads == 1
    assert np.abs(out - ref).max() <= 1e-3
    assert top1_agreement(ref, out) == 1.0
    assert out.shape == ref.shape and runner.predict_logits(x[:1]).shape == (1, ref.shape[1])  # dynamic batch


def test_openvino_static_compilations_go_to_timed_and_recurring_shapes(demo, fp32) -> None:
    """Shapes that are prepared (timed) or recur get static-shape compilations, at most ``static_shapes`` of
    them, the least recently used one making room for a prepared shape; a one-off shape, a shape the model
    does not accept, and a recurring shape with no free place stay on the dynamic model. All agree."""
    model, _, _ = demo
    x, ref, _ = fp32
    runner = ovr.OpenVINORunner(ovr.convert(model, (1, 8, 8)), threads=1)
    shape = lambda n: (n, 1, 8, 8)  # noqa: E731

    def run(n: int) -> None:
        out = runner.predict_logits(x[:n])
        assert out.shape == ref[:n].shape and np.abs(out - ref[:n]).max() <= 1e-3

    with pytest.raises(ValueError, match=r"shape \[\?,1,8,8\], not \[1, 1, 9, 9\]"):
        runner.predict_logits(np.zeros((1, 1, 9, 9), np.float32))  # not the model's image size
    assert not runner.prepare((1, 1, 9, 9))
    run(3)
    for _ in range(ovr.RECURS - 1):
        run(1)
    assert list(runner._static) == []  # probes: seen fewer than RECURS times
    run(1)
    assert list(runner._static) == [shape(1)]  # recurring
    assert runner.prepare(shape(len(x))) and list(runner._static) == [shape(1), shape(len(x))]
    for _ in range(ovr.RECURS):
        run(5)
    assert list(runner._static) == [shape(1), shape(len(x))]  # recurring, but no free place
    run(1)  # now shape(len(x)) is the least recently used
    assert runner.prepare(shape(5)) and list(runner._static) == [shape(1), shape(5)]
    run(5)
    run(len(x))
    assert all(req.get_input_tensor(0).shape == list(s) for s, req in runner._static.items())
    plain = ovr.OpenVINORunner(ovr.convert(model, (1, 8, 8)), threads=1, static_shapes=0)
    np.testing.assert_array_equal(plain.predict_logits(x[:1]), runner.predict_logits(x[:1]))
    assert not plain.prepare(shape(1)) and plain.predict_logits(x[:1]).shape == (1, ref.shape[1])
    assert list(plain._static) == []


def test_openvino_a_failed_static_compilation_costs_only_its_shape(demo, fp32, monkeypatch) -> None:
    """A shape whose static compilation fails runs dynamic and keeps what works (nothing is evicted for it);
    a model whose first static compilation fails runs every shape dynamic."""
    model, _, _ = demo
    x, ref, _ = fp32
    real = ovr.core()

    class Refusing:
        def __init__(self, batches: set[int] | None) -> None:
            self.batches = batches  # None: refuse every static compilation

        def __getattr__(self, name: str):
            return getattr(real, name)

        def compile_model(self, m, *args, **kwargs):
            batch = m.input(0).partial_shape[0]
            if batch.is_static and (self.batches is None or batch.get_length() in self.batches):
                raise RuntimeError("refused")
            return real.compile_model(m, *args, **kwargs)

    runner = ovr.OpenVINORunner(ovr.convert(model, (1, 8, 8)), threads=1)
    monkeypatch.setattr(ovr, "core", lambda: Refusing({5}))
    assert runner.prepare((1, 1, 8, 8)) and runner.prepare((len(x), 1, 8, 8))
    assert not runner.prepare((5, 1, 8, 8))
    assert list(runner._static) == [(1, 1, 8, 8), (len(x), 1, 8, 8)] and runner._failed == {(5, 1, 8, 8)}
    out = runner.predict_logits(x[:5])
    assert np.abs(out - ref[:5]).max() <= 1e-3
    assert runner.prepare((2, 1, 8, 8)) and list(runner._static) == [(len(x), 1, 8, 8), (2, 1, 8, 8)]
    never = ovr.OpenVINORunner(ovr.convert(model, (1, 8, 8)), threads=1)
    monkeypatch.setattr(ovr, "core", lambda: Refusing(None))
    assert not never.prepare((1, 1, 8, 8)) and never._budget == 0 and never._model is None
    assert np.abs(never.predict_logits(x[:1]) - ref[:1]).max() <= 1e-3


def test_openvino_streams_split_the_batch_and_keep_its_order(demo, fp32) -> None:
    """Two streams run parts of a batch at once (bulk passes); the rows come back in the input's order."""
    model, _, _ = demo
    x, ref, _ = fp32
    runner = ovr.OpenVINORunner(ovr.convert(model, (1, 8, 8)), threads=2, streams=2)
    assert runner.streams == 2
    for n in (len(x), 5, 1):  # an odd batch splits unevenly; one image runs on one request
        out = runner.predict_logits(x[:n])
        assert out.shape == ref[:n].shape and np.abs(out - ref[:n]).max() <= 1e-3
        assert top1_agreement(ref[:n], out) == 1.0
    np.testing.assert_allclose(runner.predict_logits(x[::-1].copy()), runner.predict_logits(x)[::-1], atol=1e-5)


def test_openvino_refuses_a_precision_the_cpu_lacks(demo) -> None:
    model, _, _ = demo
    missing = [p for p in ovr.PRECISIONS if p not in ovr.supported_precisions()]
    with pytest.raises(ValueError):
        ovr.OpenVINORunner(ovr.convert(model, (1, 8, 8)), 1, precision=missing[0] if missing else "f64")


def test_openvino_int8_fidelity_on_the_demo(ov_int8, fp32) -> None:
    x, ref, y = fp32
    res = ov_int8
    assert res.artifact_format == OPENVINO_FORMAT and res.extra["backend"] == "openvino"
    out = res.runner.predict_logits(x)
    agree = top1_agreement(ref, out)
    acc_fp32, acc_int8 = float((ref.argmax(1) == y).mean()), float((out.argmax(1) == y).mean())
    print(f"OpenVINO int8: agreement {agree:.4f}, accuracy {acc_int8:.4f} vs fp32 {acc_fp32:.4f}")
    assert agree >= 0.99
    assert acc_fp32 - acc_int8 <= 0.003
    assert not np.array_equal(out, ref)  # a different (int8) computation
    assert isinstance(res.model, RuntimeModule)


def test_openvino_ir_files_hold_int8_weights(ov_int8, demo) -> None:
    xml = Path(ov_int8.artifact)
    assert xml.suffix == ".xml" and xml.with_suffix(".bin").is_file()
    text = xml.read_text()
    assert "FakeQuantize" in text and 'element_type="i8"' in text
    size, _ = artifact_sizes(xml)
    assert size == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    params = sum(p.numel() for p in demo[0].parameters())
    # int8 weights: the .bin holds about one byte per parameter, far below fp32's four
    assert xml.with_suffix(".bin").stat().st_size < 1.6 * params


def test_saved_fp32_ir_keeps_fp32_weights(demo, tmp_path) -> None:
    model, _, _ = demo
    xml, binf = ovr.save_ir(ovr.convert(model, (1, 8, 8)), tmp_path / "fp32.xml")
    params = sum(p.numel() for p in model.parameters())
    assert binf.stat().st_size >= 4 * 0.9 * params  # compress_to_fp16=False: four bytes per weight, not two
    assert not list(tmp_path.glob(".*tmp"))  # the temporary folder is gone
    x = np.zeros((2, 1, 8, 8), np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(ovr.OpenVINORunner(xml, 1).predict_logits(x) - ref).max() <= 1e-3


def test_openvino_ir_reloads_in_a_fresh_process(ov_int8, fp32, tmp_path) -> None:
    x, _, _ = fp32
    np.save(tmp_path / "x.npy", x)
    labels = ov_int8.runner.predict_logits(x).argmax(1)
    script = (
        "import sys, json, numpy as np\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from nnlab.runtimes.openvino import OpenVINORunner\n"
        f"r = OpenVINORunner({str(ov_int8.artifact)!r}, threads=1)\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "print(json.dumps(r.predict_logits(x).argmax(1).tolist()))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == labels.tolist()


def test_openvino_artifact_loader(ov_int8, digits, fp32) -> None:
    x, _, _ = fp32
    template = create_model("demo-cnn", 1, digits.num_classes, (8, 8))
    back = load_openvino_int8(ov_int8.artifact, template, threads=1)
    assert np.array_equal(back.runner.predict_logits(x).argmax(1), ov_int8.runner.predict_logits(x).argmax(1))


def test_accuracy_control_keeps_the_drop_within_budget(demo, digits, tmp_path, fp32) -> None:
    model, _, _ = demo
    x, ref, y = fp32
    res = to_int8(model, digits, Int8Config(backend="openvino", calibration_samples=64, accuracy_control=True,
                                            max_drop=0.01, validation_samples=200, threads=1), tmp_path)
    assert res.extra["validation_samples"] == 200
    out = res.runner.predict_logits(x)
    assert float((ref.argmax(1) == y).mean()) - float((out.argmax(1) == y).mean()) <= 0.01


def test_auto_backend_measures_each_candidate_and_keeps_one_artifact(demo, digits, tmp_path) -> None:
    model, _, _ = demo
    sel.clear_cache()
    res = to_int8(model, digits, Int8Config(calibration_samples=64, threads=1), tmp_path)
    choice = res.extra["runtime_choice"]
    names = {f["name"] for f in choice["figures"]}
    assert names == {"openvino", "onnxruntime"} and choice["threads"] == 1 and choice["batch"] == 1
    assert all(f["status"] == "ok" and f["median_ms"] > 0 for f in choice["figures"])
    fastest = min(choice["figures"], key=lambda f: f["median_ms"])
    assert res.extra["backend"] == choice["choice"] == fastest["name"]
    files = {p.name for p in tmp_path.iterdir()}
    assert files == ({"model.int8.xml", "model.int8.bin"} if fastest["name"] == "openvino" else {"model.int8.onnx"})
    # a second run reuses the choice and quantizes once
    again = to_int8(model, digits, Int8Config(calibration_samples=64, threads=1), tmp_path / "again")
    assert again.extra["runtime_choice"]["cached"] and again.extra["backend"] == res.extra["backend"]


def test_selector_reports_every_candidate_and_why(demo) -> None:
    model, _, _ = demo
    sel.clear_cache()
    s = sel.fastest_fp32_runner(model, (1, 8, 8), threads=1, rounds=2)
    assert {f["name"] for f in s.figures} == {"pytorch", "onnxruntime", "openvino"}
    for f in s.figures:
        assert f["status"] == "ok" and f["median_ms"] > 0 and f["threads"] == 1
        assert f["top1_agreement"] == 1.0 and f["max_abs_diff"] <= 1e-3
    assert s.choice == min(s.figures, key=lambda f: f["median_ms"])["name"]
    assert s.runner.threads == 1 and s.summary().startswith(s.choice)
    x = np.random.default_rng(3).standard_normal((5, 1, 8, 8)).astype(np.float32)
    assert agreement(s.runner, model, x)[1] <= 1e-3
    assert sel.fastest_fp32_runner(model, (1, 8, 8), threads=1, rounds=2).cached


def test_selector_lists_failed_and_rejected_candidates_and_falls_back() -> None:
    ident = Identity()

    def boom() -> TorchRunner:
        raise RuntimeError("no such runtime here")

    x = np.eye(3, dtype=np.float32)[None].repeat(2, 0).reshape(2, 9)
    cands = {"good": lambda: TorchRunner(ident, 1, "good-cpu"), "broken": boom,
             "wrong": lambda: FixedRunner(np.zeros((2, 9), np.float32))}
    check = sel.fidelity_check(x.copy(), x, ident)
    s = sel.select(cands, x, 1, rounds=1, check=check)
    status = {f["name"]: f["status"] for f in s.figures}
    assert s.choice == "good" and status == {"good": "ok", "broken": "failed", "wrong": "rejected"}
    assert "no such runtime here" in s.note and "top-1 agreement" in s.note
    s2 = sel.select({"broken": boom, "wrong": cands["wrong"], "good": cands["good"]}, x, 1, rounds=1,
                    check=lambda n, r: (False, {"note": "refused"}), fallback="good")
    assert s2.choice == "good" and s2.note.startswith("fell back to good")
    with pytest.raises(RuntimeError):
        sel.select({"broken": boom}, x, 1)


def test_selector_times_a_close_call_again_and_lets_that_decide(monkeypatch) -> None:
    """When the runner-up is within CLOSE_CALL of the fastest, every candidate is timed again, longer, and that
    second measurement decides and is what the figures show; with no close call, one measurement."""
    import time

    class Sleeper(FixedRunner):
        def __init__(self, ms: float, slow_after: int | None = None, slow_ms: float = 0.0) -> None:
            super().__init__(np.zeros((1, 2), np.float32))
            self.ms, self.slow_after, self.slow_ms, self.calls = ms, slow_after, slow_ms, 0
            self.runtime = f"sleep-{ms}"

        def predict_logits(self, x: np.ndarray) -> np.ndarray:
            self.calls += 1
            slow = self.slow_after is not None and self.calls > self.slow_after
            time.sleep((self.slow_ms if slow else self.ms) / 1000.0)
            return self.out

    monkeypatch.setattr(sel, "CLOSE_CALL", 0.5)
    x = np.zeros((1, 2), np.float32)
    # "a" leads the first measurement (2 warm-up + 2 rounds × 2 calls), then slows down: the second one decides
    s = sel.select({"a": lambda: Sleeper(4.0, slow_after=6, slow_ms=9.0), "b": lambda: Sleeper(4.4),
                    "far": lambda: Sleeper(12.0)}, x, 1, rounds=2, per_round=2)
    figs = {f["name"]: f for f in s.figures}
    assert s.choice == "b" and figs["a"]["median_ms"] > figs["b"]["median_ms"]
    assert all(f["remeasured"] and f["repeats"] == 2 * 2 * sel.CLOSE_CALL_ROUNDS for f in s.figures)
    assert s.note.startswith("a and b were within 50% of each other: all were timed again over 4 rounds")
    s2 = sel.select({"a": lambda: Sleeper(4.0), "far": lambda: Sleeper(12.0)}, x, 1, rounds=2, per_round=2)
    assert s2.choice == "a" and not any(f["remeasured"] for f in s2.figures) and s2.note == ""
    assert [f["repeats"] for f in s2.figures] == [4, 4]


def _conv_channels(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("round_to", [8, 0])
def test_round_to_keeps_channel_counts_multiples(round_to: int) -> None:
    gen = torch.Generator().manual_seed(0)
    model = DemoCNN(1, 10, (8, 8), width=64, hidden=128).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    width = resolve_round_to(round_to)
    assert width == (simd_width() if round_to == 0 else 8)
    stats = channel_prune(model, (1, 8, 8), 10, "macs", 0.5, round_to=width)
    chans = _conv_channels(model) + [model.classifier[2].out_features]
    assert stats["macs_after"] <= 0.5 * stats["macs_before"]
    assert chans != [64, 128, 128, 128]  # something was pruned
    assert all(c % width == 0 for c in chans), chans


def test_prune_channels_reports_macs_and_latency_ratio_in_one_runtime(demo, digits, tmp_path) -> None:
    model, _, _ = demo
    res = apply(model, PruneChannelsConfig(amount=0.5, threads=1, runtime="openvino"),
                CompressContext(data=digits, workdir=tmp_path))
    e = res.extra
    assert e["macs_ratio"] == pytest.approx(e["macs_after"] / e["macs_before"]) and e["macs_ratio"] <= 0.5
    assert e["latency_ratio"] == pytest.approx(e["latency_pruned_ms"] / e["latency_parent_ms"])
    assert e["latency_runtime"] == res.runner.runtime == e["runtime_choice"]["runtime"]
    assert {f["name"] for f in e["runtime_choice"]["figures"]} == {"pytorch", "openvino"}
    x, _ = digits.tensors("test")
    with torch.no_grad():
        assert np.abs(res.runner.predict_logits(x.numpy()) - res.model(x).numpy()).max() <= 1e-3


def test_resnet18_at_224_int8_in_openvino(tmp_path) -> None:
    """224 px exercised end to end: random weights, batch 1, four calibration samples."""
    gen = torch.Generator().manual_seed(0)
    model = create_model("resnet18", 3, 10, (224, 224)).eval()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 224, 224), dtype=np.uint8))
    data = ImageDataset(id="r224", name="r224", source="random", classes=[str(i) for i in range(10)],
                        x_train=x[:4], y_train=torch.arange(4), x_test=x[4:], y_test=torch.arange(2))
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=gen))
    res = to_int8(model, data, Int8Config(backend="openvino", calibration_samples=4, threads=2), tmp_path)
    one = data.tensors("test")[0][:1]
    out = res.runner.predict_logits(one.numpy())
    with torch.no_grad():
        ref = model(one).numpy()
    assert out.shape == (1, 10) and np.isfinite(out).all()
    assert res.extra["calibration_sqnr_db"] >= 10.0  # random weights: a loose floor, but far from noise
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] >= 0.9


def test_int8_changes_no_process_state(demo, digits, tmp_path) -> None:
    model, _, _ = demo
    root, stdout, engine = logging.getLogger().level, sys.stdout, torch.backends.quantized.engine
    threads = torch.get_num_threads()
    for backend in ("openvino", "onnxruntime"):
        to_int8(model, digits, Int8Config(backend=backend, calibration_samples=32, threads=1), tmp_path / backend)
    assert logging.getLogger().level == root and sys.stdout is stdout
    assert torch.backends.quantized.engine == engine and torch.get_num_threads() == threads


def test_auto_never_picks_a_fast_backend_whose_outputs_collapsed(demo, digits, tmp_path, monkeypatch) -> None:
    import compression.int8 as int8

    model, _, _ = demo
    real_build = int8._build

    class Zeros:
        """Instant, and wrong: every logit zero (what int8 does to vanishing logits)."""

        runtime, threads = "zeros", 1

        def predict_logits(self, x: np.ndarray) -> np.ndarray:
            return np.zeros((len(x), 10), np.float32)

    def build(backend, *args):
        if backend == "openvino":
            return int8._Built(Zeros(), tmp_path / "model.int8.xml", int8.OPENVINO_FORMAT, [], {})
        return real_build(backend, *args)

    monkeypatch.setattr(int8, "_build", build)
    sel.clear_cache()
    res = to_int8(model, digits, Int8Config(calibration_samples=32, threads=1), tmp_path)
    figs = {f["name"]: f for f in res.extra["runtime_choice"]["figures"]}
    assert res.extra["backend"] == "onnxruntime"
    assert figs["openvino"]["status"] == "rejected" and "dB floor" in figs["openvino"]["note"]
    assert figs["openvino"]["median_ms"] is None  # a rejected candidate is not timed
    assert figs["onnxruntime"]["calibration_sqnr_db"] >= int8.MIN_SQNR_DB


def test_reloaded_int8_runs_with_the_threads_it_was_measured_with() -> None:
    from types import SimpleNamespace

    from compression.int8 import _threads_of

    pipeline = SimpleNamespace(extra={"steps": [{"extra": {"threads": 1}}, {"extra": {"threads": 3}}]})
    assert _threads_of(pipeline, None) == 3  # the last step (the int8 one) set the runtime's threads
    assert _threads_of(SimpleNamespace(extra={"latency_threads": 1, "threads": 2}), None) == 1
    assert _threads_of(SimpleNamespace(extra={}), None) is None and _threads_of(pipeline, 4) == 4
