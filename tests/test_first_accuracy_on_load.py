"""A freshly loaded model's first accuracy before its profiling ends, and one test pass for both (issue 22)."""

from __future__ import annotations

import threading

import numpy as np

from nnlab.estimate import wilson_interval
from nnlab.jobs import manager as jobs
from nnlab.jobs import refs
from nnlab.jobs.kinds import runtime_key, stream_key, user_model_id
from nnlab.workspace import Workspace
from tests.conftest import app_test, forget_model
from tests.waiting import wait_for


def test_the_first_accuracy_shows_while_the_profiling_is_held_and_the_test_pass_runs_once(demo, digits,
                                                                                        monkeypatch):
    import nnlab.base as base
    import nnlab.jobs.kinds as kinds

    ws = Workspace()
    model_id = user_model_id("demo-cnn", digits, "random", "s0")
    forget_model(ws, model_id, digits.id)
    assert not refs.has_model(model_id)

    held, release = threading.Event(), threading.Event()
    real_table = base.profile_table

    def slow_table(model, data, *a, **kw):  # the profiling (latency in every runtime) waits for the test
        held.set()
        release.wait(120)
        return real_table(model, data, *a, **kw)

    passes: list[str] = []  # every pass over the whole test split, by whom
    real_stream, real_predict = kinds.streamed_pass, base.predict_logits

    def counted_stream(model, data, split, *a, **kw):
        if split == "test":
            passes.append("streamed")
        return real_stream(model, data, split, *a, **kw)

    def counted_predict(model, data, split, *a, **kw):
        if split == "test" and kw.get("indices") is None:
            passes.append("profile")
        return real_predict(model, data, split, *a, **kw)

    monkeypatch.setattr(base, "profile_table", slow_table)
    monkeypatch.setattr(kinds, "profile_table", slow_table)
    monkeypatch.setattr(kinds, "streamed_pass", counted_stream)
    monkeypatch.setattr(base, "predict_logits", counted_predict)

    at = app_test("pages/overview.py", settle=False)
    at.session_state["weights"] = "Random weights (untrained)"
    try:
        at.run()
        assert not at.exception, at.exception
        skey = stream_key(model_id, digits.id, "test")
        wait_for(held.is_set, timeout=120, what="the profiling to start (after the test pass)")
        counts = ws.load_run(skey)
        assert counts["phase"] == "done" and counts["done"] == counts["total"] == len(digits.y_test)
        job = next(j for j in jobs.manager().list("register-model") if j.params.get("model_id") == model_id)
        assert job.active and not refs.has_model(model_id)  # the profiling is held: no record yet
        at.run()
        assert not at.exception, at.exception
        done, correct = counts["done"], counts["correct"]
        first, first_ok = counts["first_images"], counts["first_correct"]
        assert first == 300
        running = {m.label: m.value for m in at.metric}
        assert running.get("Test accuracy (running)") == f"≈ {correct / done:.2%}", running
        lo, hi = wilson_interval(correct, done)
        bars = [p.proto.text for p in at.get("progress")]
        assert f"{done} of {done} images · 95 % interval {lo:.1%}–{hi:.1%}" in bars, bars
        lo1, hi1 = wilson_interval(first_ok, first)
        assert any(f"First number: {first_ok / first:.2%} on 300 images stratified by class (95 % interval "
                   f"{lo1:.1%}–{hi1:.1%})" in c.value for c in at.caption), [c.value for c in at.caption]
        assert any("The test pass runs first" in c.value for c in at.caption)
        assert job.active  # all of it shown while the profiling still runs
    finally:
        release.set()
    job.wait(300)
    assert job.status == jobs.DONE, (job.status, job.error)
    assert passes == ["streamed"], passes  # the test split ran once: the record reused the streamed pass
    record = ws.load_model_record(model_id)
    stored = kinds.load_evaluation(ws, model_id, digits.id, "test")
    assert record.accuracy == stored.accuracy  # the base record's accuracy is the full test pass
    assert record.per_class_accuracy == stored.per_class_accuracy(digits.num_classes)
    assert record.latencies and record.extra["accuracy_pass"]["precision"] in ("fp32", "bf16")
    assert ws.load_run(runtime_key(model_id, digits.id, "test"))["seconds"] is not None
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics.get("Test accuracy") == f"{stored.accuracy:.2%}", metrics
    assert np.isfinite(record.train_accuracy)


def test_the_runtime_is_chosen_after_the_first_number_and_the_rest_runs_in_it(demo, digits, tmp_path):
    from nnlab.evaluate import predict_logits
    from nnlab.jobs.kinds import ensure_evaluation
    from nnlab.runtimes.bulk import BulkRuntime
    from nnlab.runtimes.torch_eager import TorchRunner

    ws = Workspace(tmp_path)
    phases: list[str] = []
    seen: list[int] = []

    class Chosen:  # stands for the runtime the profile measured fastest
        runtime, threads = "test-fp32-chosen", 1

        def __init__(self) -> None:
            self.inner = TorchRunner(demo[0], 1)

        def predict_logits(self, x):  # noqa: ANN001, ANN201
            seen.append(len(x))
            return self.inner.predict_logits(x)

    def rest_runtime() -> BulkRuntime:
        phases.append(ws.load_run(stream_key("m", digits.id, "test"))["phase"])  # the first number is stored first
        return BulkRuntime(Chosen(), Chosen.runtime, "chosen by the test")

    res = ensure_evaluation(ws, "m", demo[0], digits, "test", min_runtime_images=0, rest_runtime=rest_runtime)
    assert phases == ["gate"]
    assert sum(seen) == len(digits.y_test) - 300  # the first sample ran in eager PyTorch, the rest in the choice
    info = ws.load_run(runtime_key("m", digits.id, "test"))
    assert info["fp32_runtime"] == info["runtime"] == "test-fp32-chosen" and info["summary"] == "chosen by the test"
    eager = predict_logits(demo[0], digits, "test")
    assert np.abs(res.logits - eager).max() <= 1e-4 and (res.preds == eager.argmax(1)).all()
