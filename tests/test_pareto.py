"""Pareto frontier on constructed records (exact expected sets) and the figure's structure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compression.pareto import (bubble_sizes, cost_of, frontier, frontier_ids, pareto_figure, pareto_mask,
                                selected_ids, summary_rows)
from nnlab.records import Record


def rec(i: str, acc: float, size: int, lat: float = 1.0, macs: int = 1000, method: str = "m") -> Record:
    return Record(id=i, name=i, method=method, accuracy=acc, size_bytes=size, macs=macs, params=10,
                  nonzero_params=5, latency={"1": {"median_ms": lat}, "32": {"median_ms": 8 * lat}})


def brute(acc, cost):
    n = len(acc)
    out = []
    for i in range(n):
        if not (math.isfinite(acc[i]) and math.isfinite(cost[i])):
            out.append(False)
            continue
        dom = any(math.isfinite(acc[j]) and math.isfinite(cost[j]) and acc[j] >= acc[i] and cost[j] <= cost[i]
                  and (acc[j] > acc[i] or cost[j] < cost[i]) for j in range(n) if j != i)
        out.append(not dom)
    return out


def test_constructed_frontier_is_exact():
    records = [rec("base", 0.99, 1000, lat=2.0), rec("a", 0.98, 500, lat=1.0), rec("b", 0.97, 600, lat=0.5),
               rec("c", 0.95, 100, lat=3.0), rec("d", 0.90, 100, lat=0.4), rec("e", 0.99, 1200, lat=1.9),
               rec("f", 0.98, 500, lat=5.0)]
    # size: base(1000, .99) beats e; a and f tie (both kept); b dominated by a; d dominated by c
    assert frontier_ids(records, "size") == {"base", "a", "f", "c"}
    assert [r.id for r in frontier(records, "size")] == ["c", "a", "f", "base"]
    # latency: e (1.9, .99) beats base (2.0, .99); a (1.0, .98); b (0.5, .97); d (0.4, .90); c, f dominated
    assert frontier_ids(records, "latency") == {"e", "a", "b", "d"}


def test_mask_matches_brute_force_on_random_points():
    g = np.random.default_rng(1)
    for _ in range(30):
        acc = g.choice([0.8, 0.85, 0.9, 0.95], size=12).astype(float)
        cost = g.integers(1, 6, size=12).astype(float)
        acc[g.integers(0, 12)] = np.nan
        assert pareto_mask(acc, cost).tolist() == brute(acc.tolist(), cost.tolist())


def test_unknown_costs_are_never_on_the_frontier():
    records = [rec("mem", 1.0, 0), rec("x", 0.5, 10)]
    assert math.isnan(cost_of(records[0], "size"))
    assert frontier_ids(records, "size") == {"x"}
    with pytest.raises(ValueError):
        cost_of(records[0], "colour")
    with pytest.raises(ValueError):
        pareto_mask(np.ones(2), np.ones(3))


def test_figure_traces_colours_bubbles_frontier_and_ids():
    records = [rec("base", 0.99, 100_000, macs=4_000_000, method="base"),
               rec("p", 0.98, 50_000, macs=4_000_000, method="prune-unstructured"),
               rec("q", 0.97, 1_000, macs=1_000_000, method="int8")]
    fig = pareto_figure(records, "size", base_id="base")
    names = [t.name for t in fig.data]
    assert names == ["base", "prune-unstructured", "int8", "Pareto frontier"]
    assert fig.layout.xaxis.type == "log"  # 100× range
    ids = [cd[0] for t in fig.data[:3] for cd in t.customdata]
    assert ids == ["base", "p", "q"]
    front = fig.data[-1]
    assert list(front.x) == [1_000, 50_000, 100_000] and list(front.y) == [0.97, 0.98, 0.99]
    assert fig.data[2].marker.size[0] == pytest.approx(bubble_sizes(np.array([4e6, 4e6, 1e6]))[2])
    assert fig.data[0].marker.symbol[0] == "star"
    lat = pareto_figure(records, "latency")
    assert lat.layout.xaxis.type != "log"  # all latencies equal: no log axis
    assert "accuracy 98.00%" in fig.data[1].hovertext[0]


def test_bubbles_grow_with_sqrt_macs_and_selection_ids():
    s = bubble_sizes(np.array([0, 1e6, 4e6]), 10, 40)
    assert s.tolist() == pytest.approx([10, 25, 40])
    sel = {"selection": {"points": [{"customdata": ["a"]}, {"customdata": ["b"]}, {"customdata": ["a"]},
                                    {"x": 1}]}}
    assert selected_ids(sel) == ["a", "b"]
    assert selected_ids({}) == []


def test_summary_rows_mark_frontier_and_ratio():
    base, v = rec("base", 0.99, 1000), rec("v", 0.98, 250)
    rows = {r["id"]: r for r in summary_rows([base, v, rec("w", 0.9, 500)], base, "size")}
    assert rows["v"]["size ×smaller"] == 4.0 and rows["v"]["drop (points)"] == pytest.approx(1.0)
    assert rows["v"]["frontier"] and rows["base"]["frontier"] and not rows["w"]["frontier"]


def test_search_returns_the_frontier_within_budget(demo, digits, tmp_path):
    from compression.search import result_rows, search
    from nnlab.workspace import Workspace

    model, base, _ = demo
    ws = Workspace(tmp_path / "ws")
    cands = [[{"method": "prune-unstructured", "sparsity": 0.3}], [{"method": "prune-unstructured", "sparsity": 0.97}],
             [{"method": "quantize-weights", "bits": 8}]]
    seen = []
    res = search(model, base, digits, ws, budget=0.02, candidates=cands, strategy="halving", cost="size",
                 screen_samples=100, progress=lambda m, f: seen.append(f), latency_repeats=3)
    rows = {r["candidate"]: r for r in res.tried}
    assert rows["prune-unstructured(sparsity=0.97)"]["status"].startswith("dropped at screening")
    measured = [r for r in res.tried if "record_id" in r]
    assert len(measured) >= 2
    within = [r for r in measured if r["drop"] <= 0.02 + 1e-12]
    assert all(r["status"] == "within budget" for r in within)
    # the frontier is exactly the non-dominated set of base + within-budget variants
    acc = np.array([base.accuracy] + [w["accuracy"] for w in within])
    cost = np.array([cost_of(base, "size")] + [w["cost"] for w in within])
    ids = [base.id] + [w["record_id"] for w in within]
    assert {r.id for r in res.frontier} == {i for i, m in zip(ids, pareto_mask(acc, cost)) if m}
    assert all(base.accuracy - r.accuracy <= 0.02 + 1e-12 for r in res.frontier)
    # only frontier variants stay in the workspace
    assert {r.id for r in ws.list_variants()} == {r.id for r in res.frontier if r.id != base.id}
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert len(result_rows(res)) == 3


def test_points_coloured_by_runtime():
    records = [rec("base", 0.99, 1000), rec("q1", 0.98, 300, method="int8"), rec("q2", 0.97, 250, method="int8"),
               rec("p", 0.96, 500, method="prune-channels")]
    for r, runtime in zip(records, ["pytorch-eager-cpu", "openvino-int8-cpu", "onnxruntime-int8-static-cpu",
                                    "openvino-fp32-cpu"]):
        r.latency["1"]["runtime"] = runtime
    fig = pareto_figure(records, "size", color_by="runtime")
    traces = {t.name: sorted(c[0] for c in t.customdata) for t in fig.data if t.name != "Pareto frontier"}
    assert traces == {"pytorch-eager-cpu": ["base"], "openvino-int8-cpu": ["q1"],
                      "onnxruntime-int8-static-cpu": ["q2"], "openvino-fp32-cpu": ["p"]}
    assert fig.layout.legend.title.text == "runtime"
    by_method = {t.name for t in pareto_figure(records, "size").data}
    assert by_method == {"m", "int8", "prune-channels", "Pareto frontier"}
    assert summary_rows(records)[1]["runtime"] == "openvino-int8-cpu"
    with pytest.raises(ValueError):
        pareto_figure(records, "size", color_by="colour")


def test_runtime_note_names_the_choice_and_every_candidate():
    from compression.pareto import runtime_note

    r = rec("q", 0.98, 300, lat=2.5, method="int8")
    r.latency["1"].update(runtime="openvino-int8-cpu", threads=2)
    r.extra = {"runtime_choice": {"choice": "openvino", "threads": 2, "batch": 1, "rounds": 5, "cached": False,
                                  "figures": [{"name": "onnxruntime", "median_ms": 3.0, "status": "ok"},
                                              {"name": "openvino", "median_ms": 2.5, "status": "ok"},
                                              {"name": "torchao", "median_ms": None, "status": "failed"}]}}
    assert runtime_note(r) == ("runs in openvino-int8-cpu, 2 thread(s), 2.5 ms at batch 1 — chosen by measurement: "
                               "openvino 2.5 ms, onnxruntime 3 ms; torchao failed (2 thread(s), batch 1, medians "
                               "of 5 interleaved rounds)")
    for f in r.extra["runtime_choice"]["figures"][:2]:
        f["remeasured"] = True
    assert runtime_note(r).endswith("medians of 5 interleaved rounds; the two fastest were close, so all were timed "
                                    "again over twice the rounds)")
