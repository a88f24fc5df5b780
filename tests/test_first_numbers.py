"""First numbers in seconds (stratified sample, Wilson interval, streamed counts) and the fidelity gate for bf16."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nnlab.estimate import stratified_sample, stream_order, wilson_interval
from nnlab.evaluate import predict_logits, streamed_pass
from nnlab.jobs import refs
from nnlab.jobs.kinds import ensure_evaluation, runtime_key, stream_key
from nnlab.runtimes import precision as prec
from nnlab.runtimes.base import cpu_flags
from nnlab.runtimes.torch_eager import TorchRunner
from nnlab.workspace import Workspace

# --- the interval and the sample ------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (287, 300), (9876, 10000), (1, 1), (0, 1)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_interval_by_hand_and_edges():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416, half 1.96·sqrt(0.016 + 0.009604) / 1.38416 (z rounded)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4901625, abs=1e-6) and hi == pytest.approx(0.9433178, abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_stratified_sample_keeps_each_class_in_its_share():
    rng = np.random.default_rng(3)
    labels = rng.choice(10, size=5000, p=[0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005])
    for n in (300, 257, 17):
        s = stratified_sample(labels, n, seed=0)
        assert len(s) == n and len(np.unique(s)) == n and (np.diff(s) > 0).all()
        got = np.bincount(labels[s], minlength=10)
        want = np.bincount(labels, minlength=10) * n / len(labels)
        assert np.abs(got - want).max() < 1.0, (got, want)  # largest remainder: within one image of the share
    again = stratified_sample(labels, 300, seed=0)
    assert (again == stratified_sample(labels, 300, seed=0)).all()  # a fixed seed: the same sample
    assert not (again == stratified_sample(labels, 300, seed=1)).all()
    assert (stratified_sample(labels[:40], 300) == np.arange(40)).all()  # fewer than asked: all of them


def test_stream_order_is_the_sample_then_every_other_image_once():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    order, n_first = stream_order(labels, first=20, seed=0)
    assert n_first == 20 and sorted(order.tolist()) == list(range(100))
    assert (order[:20] == stratified_sample(labels, 20, seed=0)).all()
    assert np.bincount(labels[order[:20]], minlength=4).tolist() == [10, 6, 3, 1]


# --- the streamed pass ----------------------------------------------------------------------------------------


def test_streamed_pass_reports_the_first_sample_then_running_counts(demo, digits):
    model = demo[0]
    seen: list[dict] = []
    logits, info = streamed_pass(model, digits, "test", first=100, batch_size=32, on_chunk=seen.append)
    eager = predict_logits(model, digits, "test")
    assert np.abs(logits - eager).max() <= 1e-4  # the split's order, every image once (here all in fp32)
    labels = digits.labels("test").numpy()
    first = seen[0]
    assert first["phase"] == "gate" and first["done"] == 100 == first["first_images"]
    sample = stream_order(labels, 100)[0][:100]
    assert first["correct"] == int((eager[sample].argmax(1) == labels[sample]).sum())  # the sample's accuracy
    assert first["first_seconds"] is not None
    dones = [s["done"] for s in seen]
    assert dones == sorted(dones) and seen[-1]["phase"] == "done" and seen[-1]["done"] == len(labels)
    assert seen[-1]["correct"] == int((eager.argmax(1) == labels).sum())
    assert info["precision"] == "fp32" and "too few" in info["gate_note"]  # 350 left: not worth a bf16 build


class _Slow:
    """An fp32 runner that costs 20 ms more per batch (so that any faithful candidate is the faster one)."""

    def __init__(self, model):
        self.inner = TorchRunner(model, 1)
        self.runtime, self.threads = "pytorch-eager-fp32-cpu", 1

    def predict_logits(self, x):
        time.sleep(0.02)  # a cost, not a wait
        return self.inner.predict_logits(x)


class _Flipping:
    """A candidate that agrees with fp32 except on every 25th image of a batch, whose top-1 it moves (4 % flips)."""

    runtime, threads = "test-bf16-flipping", 1

    def __init__(self, model):
        self.inner = TorchRunner(model, 1)

    def predict_logits(self, x):
        out = self.inner.predict_logits(x).copy()
        for i in range(0, len(out), 25):
            top = out[i].argmax()
            out[i, (top + 1) % out.shape[1]] = out[i, top] + 1.0
        return out


class _Faithful:
    runtime, threads = "test-bf16-faithful", 1

    def __init__(self, model):
        self.inner = TorchRunner(model, 1)

    def predict_logits(self, x):
        out = self.inner.predict_logits(x)
        return out + np.float32(1e-3) * np.sign(out)  # a logit error, no top-1 change


def test_the_gate_refuses_a_runner_that_breaks_agreement(demo, digits):
    model = demo[0]
    logits, info = streamed_pass(model, digits, "test", runner=_Slow(model), first=200, min_rest=0,
                                 reduced=lambda: _Flipping(model), batch_size=50)
    g = info["gate"]
    assert g is not None and not g["passed"] and g["images"] == 200
    assert g["agreement"] == pytest.approx(0.96) and g["agreement"] < prec.MIN_AGREEMENT
    assert "top-1 agreement" in g["reason"] and "8 of 200" in g["reason"]
    assert "refused" in info["gate_note"] and g["reason"] in info["gate_note"]
    assert info["precision"] == "fp32" and info["runtime"] == "pytorch-eager-fp32-cpu"
    assert np.abs(logits - predict_logits(model, digits, "test")).max() <= 1e-4  # nothing of the candidate kept


def test_the_gate_passes_a_faithful_runner_and_the_rest_runs_in_it(demo, digits):
    model = demo[0]
    logits, info = streamed_pass(model, digits, "test", runner=_Slow(model), first=200, min_rest=0,
                                 reduced=lambda: _Faithful(model), batch_size=50)
    g = info["gate"]
    assert g["passed"] and g["agreement"] == 1.0 and g["reason"] == ""
    assert g["max_abs_err"] == pytest.approx(1e-3, rel=0.05) and 0 < g["mean_abs_err"] <= g["max_abs_err"]
    assert g["reduced_ms"] < g["fp32_ms"]
    assert info["precision"] == "bf16" and info["runtime"] == "test-bf16-faithful"
    eager = predict_logits(model, digits, "test")
    order, _ = stream_order(digits.labels("test").numpy(), 200)
    rest, first = order[200:], order[:200]
    assert np.abs(logits[first] - eager[first]).max() <= 1e-4  # the first sample stays fp32
    assert np.abs(np.abs(logits[rest] - eager[rest]) - 1e-3).max() <= 1e-4  # the rest is the candidate's


def test_the_fp32_switch_is_honoured(demo, digits):
    model = demo[0]
    built = []
    _, info = streamed_pass(model, digits, "test", runner=_Slow(model), first=200, min_rest=0, precision="fp32",
                            reduced=lambda: built.append(1) or _Faithful(model), batch_size=50)
    assert not built and info["gate"] is None and info["precision"] == "fp32"
    assert info["gate_note"] == "fp32 forced by the switch"


def test_on_this_cpu_bf16_is_tried_or_its_absence_is_stated(demo, digits):
    model = demo[0]
    support = prec.cpu_support()
    assert support["bf16"] == bool({"amx_bf16", "avx512_bf16"} & cpu_flags())
    _, info = streamed_pass(model, digits, "test", first=200, min_rest=0, batch_size=50)
    if support["bf16"]:  # e.g. this AMD EPYC: avx512_bf16 (no AMX); OpenVINO bf16 is built and gated
        g = info["gate"]
        assert g is not None, info["gate_note"]
        assert "bf16" in g["runtime"] and g["images"] == 200 and np.isfinite(g["max_abs_err"])
        assert g["passed"] == (g["agreement"] >= prec.MIN_AGREEMENT)
        assert (info["precision"] == "bf16") == (g["passed"] and g["reduced_ms"] < g["fp32_ms"]), info
    else:
        assert info["gate"] is None and "no native bf16" in info["gate_note"]
        with pytest.raises(RuntimeError, match="no native bf16"):
            prec.reduced_runner(model, tuple(digits.input_shape), 1)


def test_cpu_support_reads_the_flags():
    epyc = prec.cpu_support({"avx512f", "avx512_bf16", "avx512_vnni"})
    assert epyc == {"bf16": True, "int8": True, "amx": False, "features": ["avx512_bf16", "avx512_vnni"]}
    old = prec.cpu_support({"avx2", "fma"})
    assert not old["bf16"] and not old["int8"] and "none" in prec.unsupported_reason(old)
    assert prec.cpu_support({"amx_bf16", "amx_int8"})["amx"]


# --- the stored pass --------------------------------------------------------------------------------------------


def test_the_stored_pass_keeps_its_counts_and_the_fp32_switch_replaces_a_reduced_one(demo, digits, tmp_path):
    ws = Workspace(tmp_path)
    res = ensure_evaluation(ws, "m", demo[0], digits, "test", min_runtime_images=0)
    counts = ws.load_run(stream_key("m", digits.id, "test"))
    assert counts["phase"] == "done" and counts["done"] == counts["total"] == len(res.labels)
    assert counts["correct"] == int((res.preds == res.labels).sum())
    info = ws.load_run(runtime_key("m", digits.id, "test"))
    assert info["precision"] == "fp32" and info["first_images"] == 300 and info["gate_note"]
    # a pass stored in bf16 is run again (in fp32) when the switch asks for fp32, and kept otherwise
    ws.save_run(runtime_key("m", digits.id, "test"), {**info, "precision": "bf16"})
    ensure_evaluation(ws, "m", demo[0], digits, "test", min_runtime_images=0)
    assert ws.load_run(runtime_key("m", digits.id, "test"))["precision"] == "bf16"
    ensure_evaluation(ws, "m", demo[0], digits, "test", min_runtime_images=0, precision="fp32")
    again = ws.load_run(runtime_key("m", digits.id, "test"))
    assert again["precision"] == "fp32" and again["forced_fp32"] and again["gate_note"] == "fp32 forced by the switch"


# --- the runtime choice, measured once per model ---------------------------------------------------------------------


def test_a_preferred_runtime_is_built_and_checked_once_per_process(demo, digits):
    from nnlab.runtimes import bulk

    bulk.clear_built()
    first = bulk.bulk_runtime(demo[0], digits, "test", prefer="onnxruntime-fp32-cpu")
    again = bulk.bulk_runtime(demo[0], digits, "train", prefer="onnxruntime-fp32-cpu")
    assert first.runtime == "onnxruntime-fp32-cpu" and first.runner is not None, first.summary
    assert again.runner is first.runner and "built and checked once" in again.summary


def test_a_pass_that_measured_the_choice_stores_it_for_every_later_pass(demo, digits, tmp_path, monkeypatch):
    from nnlab.jobs.kinds import choice_key
    from nnlab.runtimes import bulk

    ws = Workspace(tmp_path)  # no record with latencies: the first pass measures (forced here for 450 images)
    monkeypatch.setattr(bulk, "MIN_IMAGES", 0)
    ensure_evaluation(ws, "m", demo[0], digits, "test")
    chosen = ws.load_run(choice_key("m"))
    assert chosen and chosen["runtime"], chosen
    monkeypatch.setattr(bulk, "MIN_IMAGES", 10**9)  # a small set: it is not measured again, the choice is reused
    ensure_evaluation(ws, "m", demo[0], digits, "train")
    info = ws.load_run(runtime_key("m", digits.id, "train"))
    assert info["fp32_runtime"] == chosen["runtime"] or chosen["runtime"] == "pytorch-eager-fp32-cpu"
    assert "too few" not in info["summary"] and "measured fastest" in info["summary"], info["summary"]


# --- the Overview page ----------------------------------------------------------------------------------------------


def test_overview_states_the_gate_verdict_and_honours_the_fp32_switch(demo, digits):
    from tests.conftest import app_test

    at = app_test("pages/overview.py")
    at.run()
    assert not at.exception, at.exception
    ws = Workspace()
    key = runtime_key(demo[1].id, digits.id, "test")
    original = ws.load_run(key)
    assert original is not None
    try:
        refused = {"runtime": "openvino-bf16-cpu", "precision": "bf16", "images": 300, "agreement": 0.96,
                   "max_abs_err": 2.5, "mean_abs_err": 0.125, "passed": False,
                   "reason": "top-1 agreement with fp32 96.00% < 99.5%: 12 of 300 predictions changed"}
        ws.save_run(key, {**original, "gate": refused, "gate_code": "refused", "precision": "fp32"})
        at.run()
        said = " ".join(w.value for w in at.warning)
        assert "refused by the fidelity gate" in said and "96.00%" in said and "99.5%" in said, said
        # a pass stored in bf16, then the switch: the Overview runs the pass again in fp32 and says so
        ws.save_run(key, {**original, "gate": {**refused, "agreement": 1.0, "passed": True, "reason": ""},
                          "gate_code": "used", "precision": "bf16"})
        at.toggle(key="_fp32_only_toggle").set_value(True).run()
        assert not at.exception, at.exception
        assert at.session_state["fp32_only"] is True
        again = ws.load_run(key)
        assert again["precision"] == "fp32" and again["forced_fp32"] and again["gate_code"] == "forced"
        assert any("as the switch asks" in c.value for c in at.caption)
        assert any(m.label == "Test accuracy" for m in at.metric)
    finally:
        ws.save_run(key, original)


def test_overview_shows_the_first_numbers_while_the_pass_streams(demo, digits, monkeypatch):
    import threading

    import nnlab.jobs.kinds as kinds
    from nnlab.jobs.kinds import eval_key, user_model_id
    from tests.conftest import app_test, forget_model
    from tests.waiting import wait_for

    ws = Workspace()
    model_id = user_model_id("demo-cnn", digits, "random", "s0")
    forget_model(ws, model_id, digits.id)  # not registered yet, no pass stored: its register job streams the pass
    release, reached, real = threading.Event(), threading.Event(), kinds.ensure_evaluation

    def held(ws_, mid, model, data, split, progress=None, cancel=None, **kw):
        if mid == model_id and split == "test":  # the pass has done its first sample and 60 more images
            ws_.save_run(kinds.stream_key(mid, data.id, split), {
                "phase": "rest", "total": 450, "done": 360, "correct": 324, "first_images": 300,
                "first_correct": 276, "first_seconds": 1.5, "runtime": "openvino-bf16-cpu", "gate_note": "used"})
            reached.set()
            release.wait(60)
        return real(ws_, mid, model, data, split, progress, cancel, **kw)

    monkeypatch.setattr(kinds, "ensure_evaluation", held)
    monkeypatch.setenv("NNLAB_STREAM_MIN", "0")
    at = app_test("pages/overview.py", settle=False)  # what the page shows while the register job runs
    at.session_state["weights"] = "Random weights (untrained)"
    try:
        at.run()
        assert not at.exception, at.exception
        wait_for(reached.is_set, timeout=120, what="the register job's pass to stream")
        at.run()  # the page's next run (in a browser: its fragment's) reads the streamed counts
        assert not at.exception, at.exception
        running = {m.label: m.value for m in at.metric}
        assert running.get("Test accuracy (running)") == "≈ 90.00%", running  # 324 of 360
        lo, hi = wilson_interval(324, 360)
        bars = [p.proto.text for p in at.get("progress")]
        assert f"360 of 450 images · 95 % interval {lo:.1%}–{hi:.1%}" in bars, bars
        lo1, hi1 = wilson_interval(276, 300)
        assert any(f"First number: 92.00% on 300 images stratified by class (95 % interval {lo1:.1%}–{hi1:.1%}), "
                   "after 1.5 s." in c.value for c in at.caption)
    finally:
        release.set()
    wait_for(lambda: refs.has_model(model_id), timeout=120, what="the model to be registered (its pass stored)")
    assert ws.result_path(eval_key(model_id, digits.id, "test")).is_file()
    at.run()
    assert not at.exception, at.exception
    assert any(m.label == "Test accuracy" for m in at.metric)


def test_the_autocast_bf16_runner_is_gated_like_any_other(demo, digits):
    model = demo[0]
    runner = prec.AutocastRunner(__import__("copy").deepcopy(model), 1)
    x = digits.normalize(digits.images("test")[:200])
    ref = predict_logits(model, digits, "test", indices=np.arange(200))
    out = runner.predict_logits(x)
    verdict = prec.gate(ref, out, runner.runtime)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert 0 < verdict.max_abs_err < 0.5 and verdict.mean_abs_err <= verdict.max_abs_err  # bf16 rounding, stated
    assert verdict.passed == (verdict.agreement >= prec.MIN_AGREEMENT)
    assert runner.runtime == "pytorch-eager-bf16-cpu"


@pytest.mark.skipif(not prec.cpu_support()["bf16"], reason="no native bf16 on this CPU: the branch that states it "
                    "is asserted by test_on_this_cpu_bf16_is_tried_or_its_absence_is_stated")
def test_the_bf16_runner_of_a_model_is_built_once(demo, digits):
    shape = tuple(digits.input_shape)
    first = prec.reduced_runner(demo[0], shape, 1)
    assert prec.reduced_runner(demo[0], shape, 1) is first
    assert prec.reduced_runner(demo[0], shape, 2, streams=2) is not first  # other threads: another runner
