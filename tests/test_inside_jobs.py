"""The Look-inside scans run as jobs: the same numbers as the direct calls, stored under their inputs, and the
Feature maps and Activations pages compute them in job threads, not in the page's script thread."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from diagnostics import activations as A
from diagnostics import features as FM
from diagnostics import tasks as dtasks
from nnlab.jobs import manager as jobs
from nnlab.jobs import refs
from nnlab.workspace import Workspace
from tests.conftest import app_test


def _run(kind: str, params: dict) -> jobs.Job:
    old = jobs.find(kind, params)
    if old is not None:  # a reused test workspace: compute again
        jobs.manager().forget(old.key)
    job = jobs.submit(kind, params)
    assert job.wait(180), "the job did not finish"
    assert job.status == jobs.DONE, job.error
    return job


def _same(a: A.LayerActivation, b: A.LayerActivation) -> bool:
    for k in ("name", "type", "shape", "mean", "std", "min", "max", "dead_fraction", "dead_channels",
              "saturated_fraction", "zero_fraction"):
        va, vb = getattr(a, k), getattr(b, k)
        if not (va == vb or (isinstance(va, float) and math.isnan(va) and math.isnan(vb))):
            return False
    return np.array_equal(a.counts, b.counts) and np.array_equal(a.edges, b.edges)


def test_channel_scores_job_gives_the_direct_calls_numbers(demo, digits):
    model, rec, _ = demo
    params = {"model_id": rec.id, "data": refs.data_ref("digits"), "layer": "features.4", "split": "train",
              "limit": 300, "reduce": "mean"}
    job = _run("channel-scores", params)
    key = dtasks.channel_scores_key(rec.id, digits.id, "features.4", "train", 300, "mean")
    assert job.result["key"] == key and job.result["samples"] == 300
    stored = dtasks.load_channel_scores(Workspace(), key)
    data = refs.load_data(params["data"])  # what the job reads (the page's dataset, from the data cache)
    direct = FM.channel_scores(model, data, "features.4", "train", 300, "mean")
    assert stored is not None and stored.shape == direct.shape == (300, job.result["channels"])
    np.testing.assert_array_equal(stored, direct)


@pytest.mark.parametrize("kind", ["activations", "conv/linear"])
def test_activation_stats_job_gives_the_direct_calls_numbers(demo, digits, kind):
    model, rec, _ = demo
    params = {"model_id": rec.id, "data": refs.data_ref("digits"), "split": "test", "n": 100, "kind": kind,
              "bins": 17}
    job = _run("activation-stats", params)
    key = dtasks.activation_stats_key(rec.id, digits.id, "test", 100, kind, 17)
    assert job.result["key"] == key
    stored = dtasks.load_activation_stats(Workspace(), key)
    x, _ = refs.load_data(params["data"]).tensors("test", np.arange(100))
    direct = A.activation_stats(model, x, kind=kind, bins=17, batch_size=32)
    assert stored is not None and len(stored) == len(direct) == job.result["layers"] > 0
    assert all(_same(a, b) for a, b in zip(stored, direct))


def test_layer_activation_round_trips_through_json(demo, digits):
    model, _, _ = demo
    x, _ = digits.tensors("test", np.arange(8))
    stats = A.activation_stats(model, x, kind="all leaves", bins=9)
    back = [A.LayerActivation.from_dict(json.loads(json.dumps(s.to_dict()))) for s in stats]
    assert any(math.isnan(s.saturated_fraction) for s in stats)
    assert all(_same(a, b) for a, b in zip(back, stats))


def test_a_missing_variant_fails_the_job(demo):
    _, rec, _ = demo
    job = jobs.submit("activation-stats", {"model_id": rec.id, "data": refs.data_ref("digits"), "split": "test",
                                           "n": 4, "kind": "activations", "bins": 10, "variant_id": "no-such"})
    assert job.wait(60) and job.status == jobs.FAILED and "no-such" in job.error


def _forget_stored(kind: str, params: dict, path) -> None:
    path.unlink(missing_ok=True)
    old = jobs.find(kind, params)
    if old is not None:
        jobs.manager().forget(old.key)


def test_the_pages_compute_in_jobs_not_in_the_script_thread(demo, digits, monkeypatch):
    from nnlab.ui import session

    # AppTest runs a page alone (Streamlit's pages/ folder mode), so the page runs app.py around itself
    monkeypatch.setattr(session, "APP", Path(__file__).resolve().parents[1] / "app.py")
    _, rec, _ = demo
    ws = Workspace()
    where: list[str] = []
    real_scores, real_stats = FM.channel_scores, A.activation_stats

    def scores(*args, **kwargs):
        where.append(threading.current_thread().name)
        return real_scores(*args, **kwargs)

    def stats(*args, **kwargs):
        where.append(threading.current_thread().name)
        return real_stats(*args, **kwargs)

    monkeypatch.setattr(FM, "channel_scores", scores)
    monkeypatch.setattr(A, "activation_stats", stats)
    ref = refs.data_ref("digits")
    fparams = {"model_id": rec.id, "data": ref, "layer": "features.0", "split": "test", "limit": 200, "reduce": "mean"}
    _forget_stored("channel-scores", fparams, ws.result_path(
        dtasks.channel_scores_key(rec.id, digits.id, "features.0", "test", 200, "mean")))
    at = app_test("pages/inside_features.py")
    at.session_state["features_layer"] = "features.0"
    at.session_state["features_top_limit"] = 200
    at.session_state["features_top_reduce"] = "mean"
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert len(at.dataframe[-1].value) == 12
    assert jobs.find("channel-scores", fparams).status == jobs.DONE

    aparams = {"model_id": rec.id, "data": ref, "split": "test", "n": 64, "kind": "activations", "bins": 23}
    _forget_stored("activation-stats", aparams, ws.run_path(
        dtasks.activation_stats_key(rec.id, digits.id, "test", 64, "activations", 23)))
    at = app_test("pages/inside_activations.py")
    at.session_state["acts_n"] = 64
    at.session_state["acts_bins"] = 23
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    table = at.dataframe[0].value
    stored = dtasks.load_activation_stats(ws, dtasks.activation_stats_key(rec.id, digits.id, "test", 64,
                                                                          "activations", 23))
    assert list(table["layer"]) == [s.name for s in stored]
    assert list(table["dead units"]) == [s.dead_fraction for s in stored]
    assert jobs.find("activation-stats", aparams).status == jobs.DONE
    assert len(where) == 2 and all(name.startswith("nnlab-job-") for name in where), where
