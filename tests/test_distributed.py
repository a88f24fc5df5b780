"""The execution layer in-process (Ray disabled): results, progress, cancel, failures, references, search pieces.

Real Ray runs in tests/test_distributed_local.py (a local Ray) and tests/test_distributed_cluster.py (a
two-node cluster).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
import torch

import compression  # noqa: F401 - registers the methods
from compression.search import drop_incomplete, hypervolume, measure_piece, search, search_hypervolume
from nnlab import config
from nnlab.jobs import pieces as distributed
from nnlab.jobs.pieces import TaskResult, map_tasks
from nnlab.train import Cancelled
from nnlab.workspace import Workspace

# --- piece functions (module level: importable by name, as map_tasks requires) -----------------------------

def square(piece: dict, report) -> dict:
    report("half way", 0.5)
    report("done", 1.0)
    return {"y": piece["x"] ** 2, "threads": torch.get_num_threads(), "node": report.node}


def fail_on_three(piece: dict, report) -> dict:
    if piece["x"] == 3:
        raise RuntimeError("three is bad")
    return {"y": piece["x"]}


def slow_until_cancelled(piece: dict, report) -> dict:
    for k in range(200):
        report.check_cancel()
        report(f"step {k}", k / 200)
        time.sleep(0.005)
    return {"x": piece["x"]}


def note_cleanup(piece: dict) -> None:
    CLEANED.append(piece["x"])


CLEANED: list[int] = []


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    monkeypatch.setenv("NNLAB_RAY", "0")


# --- map_tasks -----------------------------------------------------------------------------------------

def test_in_process_results_progress_and_threads():
    seen = []
    res = map_tasks(square, [{"x": i} for i in range(5)], lambda i, m, f: seen.append((i, m, f)),
                    threads_per_task=1)
    assert [r.value["y"] for r in res] == [0, 1, 4, 9, 16]
    assert all(r.ok and r.executor == "in-process" and r.attempts == 1 and r.threads == 1 for r in res)
    assert all(r.value["threads"] == 1 for r in res)  # the piece ran with the stated thread count
    assert torch.get_num_threads() == 2  # ... and the caller's count is back
    node = res[0].node
    assert seen == [(i, m, f) for i in range(5)
                    for m, f in ((f"started on {node} (in-process)", 0.0), ("half way", 0.5), ("done", 1.0))]


def test_a_failing_piece_is_reported_and_the_others_run():
    res = map_tasks(fail_on_three, [{"x": i} for i in range(5)])
    assert [r.status for r in res] == ["ok", "ok", "ok", "failed", "ok"]
    assert "RuntimeError: three is bad" in res[3].error and res[3].value is None


def test_cancel_stops_the_running_piece_and_skips_the_rest():
    CLEANED.clear()
    t0 = time.monotonic()
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 250  # piece 0 polls 201 times: this is half way into piece 1

    res = map_tasks(slow_until_cancelled, [{"x": i} for i in range(4)], cancel=cancel, cleanup=note_cleanup)
    assert time.monotonic() - t0 < 5
    assert [r.status for r in res] == ["ok", "cancelled", "cancelled", "cancelled"]
    assert [r.attempts for r in res] == [1, 1, 0, 0]
    assert sorted(CLEANED) == [1, 2, 3]


@pytest.mark.parametrize("fn", [lambda p, r: {}, square.__call__])
def test_only_importable_module_level_functions(fn):
    with pytest.raises(ValueError, match="module-level"):
        map_tasks(fn, [{"x": 1}])


def test_pieces_are_json_not_objects():
    with pytest.raises(TypeError):
        map_tasks(square, [{"x": 1, "model": torch.nn.Linear(1, 1)}])


def test_executor_follows_the_settings(monkeypatch):
    assert distributed.executor().kind == "in-process"
    assert "disabled" in distributed.executor().reason
    assert distributed.executor(use_ray=False).kind == "in-process"


def test_ray_failing_to_start_runs_in_process(monkeypatch):
    distributed.shutdown_ray()
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError: Ray "unavailable"
    try:
        ex = distributed.ensure_ray()
        assert ex.kind == "in-process" and "not available" in ex.reason
        res = map_tasks(square, [{"x": 3}], use_ray=True)
        assert res[0].ok and res[0].value["y"] == 9 and res[0].executor == "in-process"
    finally:
        monkeypatch.delitem(sys.modules, "ray")
        distributed.shutdown_ray()


def test_ray_address_flag_sets_the_environment(monkeypatch):
    monkeypatch.setenv("NNLAB_RAY_ADDRESS", "")  # restored after the test (apply_cli_args writes os.environ)
    config.apply_cli_args(["--ray-address", "10.0.0.1:6379"])
    assert os.environ["NNLAB_RAY_ADDRESS"] == "10.0.0.1:6379" == distributed.ray_address()
    config.apply_cli_args(["--ray-address=local"])
    assert distributed.ray_address() == "local"


def test_task_result_round_trips_as_json():
    r = TaskResult(2, "ok", value={"a": 1}, node="h", executor="ray", threads=1, seconds=0.5, attempts=2)
    assert TaskResult(**json.loads(json.dumps(r.to_dict()))) == r


# --- references -------------------------------------------------------------------------------------------

def test_references_resolve_to_the_same_model_and_data(demo, digits):
    model, base, _ = demo
    dref = distributed.dataset_ref(digits)
    data = distributed.load_dataset_ref(dref)
    assert torch.equal(data.x_test[:], digits.x_test[:]) and data.id == "digits"
    mref = distributed.model_ref(model, base.id, base.arch, Workspace().root)
    loaded = distributed.load_model_ref(mref, data)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert loaded is not model and distributed.load_model_ref(mref, data) is loaded  # one copy per process
    bad = {**mref, "weights_hash": "0" * 16}
    with pytest.raises(ValueError, match="weights differ"):
        distributed.load_model_ref(bad, data)
    with pytest.raises(ValueError, match="fingerprint"):
        distributed.load_dataset_ref({**dref, "fingerprint": "f" * 16})


# --- search pieces -----------------------------------------------------------------------------------------

GRID = [[{"method": "prune-unstructured", "sparsity": 0.3}], [{"method": "quantize-weights", "bits": 4}],
        [{"method": "cluster", "k": 8}]]


def test_search_ids_are_deterministic_and_a_rerun_reuses_records(demo, digits, tmp_path):
    model, base, _ = demo
    ws = Workspace(tmp_path / "ws")
    ws.save_model(base.id, model.state_dict())  # the parent must be in this workspace for workers
    ws.save_model_record(base.id, base)
    first = search(model, base, digits, ws, budget=0.05, candidates=GRID, keep_all=True, latency_repeats=2)
    sid = first.sweep_id
    assert [r["record_id"] for r in first.tried] == [f"{sid}-{i:03d}" for i in range(3)]
    assert first.executor["kind"] == "in-process"
    for rec in first.measured:
        assert rec.extra["threads"] == 1 and rec.extra["executor"] == "in-process"
        assert rec.extra["node"] and rec.extra["sweep_id"] == sid
    again = search(model, base, digits, ws, budget=0.05, candidates=GRID, keep_all=True, latency_repeats=2)
    assert again.sweep_id == sid and all(r["reused"] for r in again.tried)
    assert [r.to_dict() for r in again.measured] == [r.to_dict() for r in first.measured]  # created included
    assert len(ws.list_variants()) == 3


def test_a_half_written_variant_is_replaced_and_cleanup_removes_leftovers(demo, digits, tmp_path):
    model, base, _ = demo
    ws = Workspace(tmp_path / "ws")
    ws.save_model(base.id, model.state_dict())
    ws.save_model_record(base.id, base)
    piece = {"workspace": str(ws.root), "variant_id": "s-test-000", "name": "t",
             "model": distributed.model_ref(model, base.id, base.arch, ws.root),
             "dataset": distributed.dataset_ref(digits), "configs": GRID[1], "variant_kwargs": {"latency_repeats": 2}}
    half = ws.variant_dir("s-test-000")
    half.mkdir(parents=True)
    (half / "model.nnlp").write_bytes(b"half")  # a worker died here: no record
    out = measure_piece(piece, distributed._LocalReport(0, 1, None, lambda: False))
    assert not out["reused"] and [r.id for r in ws.list_variants()] == ["s-test-000"]
    assert (half / "record.json").is_file() and (half / "model.nnlp").read_bytes() != b"half"
    drop_incomplete(piece)  # a complete variant stays
    assert ws.load_variant("s-test-000") is not None
    other = {**piece, "variant_id": "s-test-001"}
    ws.variant_dir("s-test-001").mkdir()
    drop_incomplete(other)
    assert not ws.variant_dir("s-test-001").exists()


def test_cancelled_search_leaves_no_half_written_variant(demo, digits, tmp_path):
    model, base, _ = demo
    ws = Workspace(tmp_path / "ws")
    ws.save_model(base.id, model.state_dict())
    ws.save_model_record(base.id, base)
    state = {"measuring": 0}

    def task_progress(i: int, message: str, fraction: float) -> None:
        if message == "measuring the variant":
            state["measuring"] += 1

    cands = GRID + [[{"method": "prune-unstructured", "sparsity": s}] for s in (0.5, 0.7)]
    with pytest.raises(Cancelled):
        search(model, base, digits, ws, budget=0.05, candidates=cands, keep_all=True, latency_repeats=2,
               task_progress=task_progress, cancel=lambda: state["measuring"] >= 2)
    dirs = [d for d in (ws.root / "variants").iterdir()]
    assert all((d / "record.json").is_file() for d in dirs)  # nothing half-written
    assert 1 <= len(dirs) < len(cands)


def test_hypervolume_matches_optuna():
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    pts = [(float(a), float(c)) for a, c in zip(rng.uniform(0.8, 1.0, 12), rng.uniform(0.05, 1.2, 12))]
    ref_acc, ref_cost = 0.85, 1.0
    inside = np.array([[-a, c] for a, c in pts if a > ref_acc and c < ref_cost])
    expected = compute_hypervolume(inside, np.array([-ref_acc, ref_cost]))
    assert hypervolume(pts, ref_acc, ref_cost) == pytest.approx(expected, rel=1e-12)
    assert hypervolume([(0.9, 0.5)], 0.8, 1.0) == pytest.approx(0.05)
    assert hypervolume([(0.7, 0.5), (0.9, 1.5)], 0.8, 1.0) == 0.0


def test_nsga2_returns_the_pareto_set_within_budget(demo, digits, tmp_path):
    model, base, _ = demo
    ws = Workspace(tmp_path / "ws")
    ws.save_model(base.id, model.state_dict())
    ws.save_model_record(base.id, base)
    space = {"stages": [
        {"name": "prune", "choices": [None, {"method": "prune-unstructured", "sparsity": 0.5},
                                      {"method": "prune-unstructured", "sparsity": 0.9}]},
        {"name": "encode", "choices": [None, {"method": "quantize-weights", "bits": 8},
                                       {"method": "quantize-weights", "bits": 2}]}]}
    res = search(model, base, digits, ws, budget=0.02, strategy="nsga2", space=space, trials=12, population=4,
                 keep_all=True, latency_repeats=2)
    ids = [r["record_id"] for r in res.tried if "record_id" in r]
    assert len(ids) == len(set(ids)) == res.evaluations <= 8  # each distinct pipeline measured once
    within = [r for r in res.measured if base.accuracy - r.accuracy <= 0.02 + 1e-12]
    from compression.pareto import frontier

    assert {r.id for r in res.frontier} == {r.id for r in frontier([base, *within], "size")}
    assert all(base.accuracy - r.accuracy <= 0.02 + 1e-12 for r in res.frontier)
    assert search_hypervolume(res.frontier, base, 0.02) == pytest.approx(search_hypervolume(within, base, 0.02))
    again = search(model, base, digits, ws, budget=0.02, strategy="nsga2", space=space, trials=12, population=4,
                   keep_all=True, latency_repeats=2)
    assert [r["record_id"] for r in again.tried] == [r["record_id"] for r in res.tried]  # seeded: same trials
