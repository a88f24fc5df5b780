"""Automatic search: try methods and levels, keep the whole Pareto frontier within an accuracy-drop budget.

Three strategies:

* ``grid`` — every candidate (a pipeline of method configs) becomes a measured variant
  (:func:`compression.variant.make_variant`).
* ``halving`` — successive screening first: every candidate is applied and scored on a small held-out
  part of the *training* split; candidates whose drop clearly exceeds the budget (by more than two
  standard errors) are dropped, the sample doubles, and this repeats; only the survivors are turned
  into measured variants. It saves the measurement of hopeless candidates (and never tunes on test).
* ``nsga2`` — multi-objective search with Optuna's NSGA-II over a pipeline space (:func:`default_space`:
  a pruning level, then an encoding — weight bits, cluster count or int8), maximising accuracy and
  minimising the cost, with the accuracy budget as a constraint; generation after generation of
  ``population`` trials, ``trials`` in all.

Every measurement is a *piece* run by :func:`nnlab.jobs.pieces.map_tasks` (Ray tasks, or in-process): the
piece loads the model and the data from references, writes its variant to the workspace itself (record
last) under a deterministic id — ``<sweep id>-<candidate index>`` (grid, halving) or
``<sweep id>-<hash of the pipeline>`` (nsga2) — and reuses a complete record already there, so a retried
piece never writes twice and a repeated search measures nothing again. Records say where and how they were
measured: ``extra["node"]``, ``extra["threads"]``, ``extra["executor"]``, ``extra["sweep_id"]``.

The budget is judged on the variants' test accuracy against the base record. The result is the frontier
(accuracy against the chosen cost) of the base plus every variant within budget, not one configuration.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.pareto import cost_of, frontier
from compression.registry import CompressContext, MethodConfig, apply_pipeline, config_from_dict
from compression.variant import describe_configs
from nnlab.data.sets import ImageDataset
from nnlab.errors import Cancelled
from nnlab.i18n import _
from nnlab.jobs.pieces import (
    Executor,
    Report,
    TaskResult,
    dataset_ref,
    executor,
    load_dataset_ref,
    load_model_ref,
    map_tasks,
    model_ref,
    primed,
    ref_key,
    stable_id,
    weights_hash,
)
from nnlab.records import Record
from nnlab.train import quick_eval
from nnlab.workspace import Workspace

_CPU = torch.device("cpu")
ProgressFn = Callable[[str, float], None]
TaskProgressFn = Callable[[int, str, float], None]
CancelFn = Callable[[], bool]


def default_grid() -> list[list[dict]]:
    """A small grid that suits the demo CNN: pruning, weight quantization, clustering, int8, and combinations."""
    grid: list[list[dict]] = [[{"method": "prune-unstructured", "sparsity": s}] for s in (0.5, 0.7, 0.85, 0.95)]
    grid += [[{"method": "quantize-weights", "bits": b}] for b in (8, 4, 2)]
    grid += [[{"method": "cluster", "k": k}] for k in (16, 4)]
    grid += [[{"method": "int8"}]]
    grid += [[{"method": "prune-unstructured", "sparsity": 0.7}, {"method": "quantize-weights", "bits": 4}],
             [{"method": "prune-unstructured", "sparsity": 0.7}, {"method": "cluster", "k": 16}]]
    return grid


def parse_candidates(candidates: list[list[dict]] | None) -> list[list[MethodConfig]]:
    """Config dicts → configs (``ValueError`` naming the bad candidate); unknown methods are skipped."""
    from compression.registry import METHODS

    out = []
    for i, steps in enumerate(candidates if candidates is not None else default_grid()):
        if any(s.get("method") not in METHODS for s in steps):
            continue
        try:
            out.append([config_from_dict(s) for s in steps])
        except ValueError as exc:
            raise ValueError(_("candidate {number}: {exc}").format(number=i + 1, exc=exc)) from exc
    if not out:
        raise ValueError(_("no candidate uses a registered method"))
    return out


@dataclass
class SearchResult:
    """What a search produced.

    Attributes:
        base: The base record (the reference accuracy).
        budget: Largest accepted accuracy drop (fraction: 0.01 = one point).
        cost: The cost axis of the frontier ("size", "latency", "macs" …).
        strategy: "grid", "halving" or "nsga2".
        tried: One row per candidate: description, screening accuracies, record id, test drop, status, and
            where it was measured (node, threads, attempts, seconds).
        records: Every measured variant kept in the workspace.
        frontier: Frontier of the base plus the variants within budget, cheapest first.
        sweep_id: Prefix of the variant ids.
        measured: Every variant measured (kept or not).
        evaluations: Distinct pipelines measured (nsga2).
        executor: Where the pieces ran (:class:`nnlab.jobs.pieces.Executor` as a dict).
        tasks: One dict per piece (variant id, status, node, threads, seconds, attempts).
    """

    base: Record
    budget: float
    cost: str
    strategy: str
    tried: list[dict] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    frontier: list[Record] = field(default_factory=list)
    sweep_id: str = ""
    measured: list[Record] = field(default_factory=list)
    evaluations: int = 0
    executor: dict = field(default_factory=dict)
    tasks: list[dict] = field(default_factory=list)

    def within_budget(self) -> list[Record]:
        return [r for r in self.records if self.base.accuracy - r.accuracy <= self.budget + 1e-12]


def _screen(model: nn.Module, data: ImageDataset, cands: list[list[MethodConfig]], budget: float, arch: str,
            rows: list[dict], start: int, rungs: int, seed: int, report: ProgressFn, cancel: CancelFn,
            ) -> list[int]:
    """Successive screening on held-out training samples; returns the surviving candidate indices."""
    from compression.pruning import split_train

    val = split_train(len(data.y_train), seed)[1]
    alive = list(range(len(cands)))
    models: dict[int, nn.Module] = {}
    with tempfile.TemporaryDirectory(prefix="nnlab-search-") as tmp:
        for i in alive:  # apply each once; the rungs only grow the evaluation sample
            if cancel():
                raise Cancelled(_("cancelled by the user"))
            report(_("screening: applying {candidate}").format(candidate=rows[i]['candidate']),
                   0.4 * (i + 1) / len(cands))
            ctx = CompressContext(data=data, cancel=cancel, workdir=Path(tmp) / f"c{i}", arch=arch, seed=seed)
            models[i] = apply_pipeline(model, cands[i], ctx).model.cpu().eval()
        for r in range(rungs):
            n = min(len(val), start * 2 ** r)
            idx = val[:n]
            _loss, base_acc = quick_eval(model, data, "train", indices=idx, device=_CPU)
            se = math.sqrt(max(base_acc * (1 - base_acc), 1.0 / n) / n)
            keep = []
            for i in alive:
                if cancel():
                    raise Cancelled(_("cancelled by the user"))
                _loss, acc = quick_eval(models[i], data, "train", indices=idx, device=_CPU)
                rows[i].setdefault("screen", []).append({"samples": n, "accuracy": acc, "base": base_acc})
                if base_acc - acc <= budget + 2 * math.sqrt(2) * se:
                    keep.append(i)
                else:
                    rows[i]["status"] = f"dropped at screening ({n} samples: drop {100 * (base_acc - acc):.1f} points)"
            alive = keep
            report(_("screening rung {rung}/{rungs}: {n_alive} of {n_cands} left").format(
                rung=r + 1, rungs=rungs, n_alive=len(alive), n_cands=len(cands)), 0.4 + 0.1 * (r + 1) / rungs)
            if n >= len(val) or not alive:
                break
    return alive


# --- pieces: one measured variant each --------------------------------------------------------------------

class _StampedWorkspace(Workspace):
    """A workspace whose variant records get where-and-how facts in ``extra`` (written once, last)."""

    def __init__(self, root: str | Path, stamp: dict) -> None:
        super().__init__(root)
        self.stamp = stamp

    def save_variant(self, record: Record) -> Path:
        record.extra.update(self.stamp)
        return super().save_variant(record)


def measure_piece(piece: dict, report: Report) -> dict:
    """Piece function: make (or reuse) the variant ``piece["variant_id"]`` and return its record.

    The piece holds references (``workspace``, ``model``, ``dataset``), the pipeline (``configs``), the
    ``name`` and JSON-able ``variant_kwargs`` for :func:`compression.variant.make_variant`. A complete record
    already stored under the id is returned as is; a half-written folder (a lost attempt) is removed first.
    """
    from compression.variant import make_variant

    stamp = {"node": report.node, "threads": report.threads, "executor": report.executor,
             "sweep_id": piece.get("sweep_id", "")}
    ws = _StampedWorkspace(piece["workspace"], stamp)
    vid = piece["variant_id"]
    old = ws.load_variant(vid)
    if old is not None and old.status == "ok":
        report(_("reused the stored record"), 1.0)
        return {"record": old.to_dict(), "reused": True}
    if ws.variant_dir(vid).exists():
        ws.delete_variant(vid)
    data = load_dataset_ref(piece["dataset"])
    model = load_model_ref(piece["model"], data)
    configs = [config_from_dict(c) for c in piece["configs"]]
    rec = make_variant(model, piece["model"]["model_id"], piece["model"]["arch"], configs, data, ws,
                       name=piece.get("name"), progress=report, cancel=report.cancelled, threads=report.threads,
                       variant_id=vid, **piece.get("variant_kwargs", {}))
    return {"record": rec.to_dict(), "reused": False}


def drop_incomplete(piece: dict) -> None:
    """Cleanup for a piece that did not finish: remove its variant folder unless it holds a readable record."""
    ws = Workspace(piece["workspace"])
    vid = piece["variant_id"]
    if ws.variant_dir(vid).exists() and ws.load_variant(vid) is None:
        ws.delete_variant(vid)


@dataclass
class Measurer:
    """Turns pipelines into measured variants through :func:`nnlab.jobs.pieces.map_tasks`.

    Built by :func:`measurer`; holds the references every piece gets and what the in-process path may
    use without loading (the caller's live model and data).
    """

    ws: Workspace
    model_ref: dict
    data_ref: dict
    sweep_id: str
    use_ray: bool | None
    threads: int
    variant_kwargs: dict
    live: dict
    executor: Executor | None = None
    tasks: list[dict] = field(default_factory=list)

    def piece(self, configs: list[MethodConfig], variant_id: str, name: str) -> dict:
        return {"workspace": str(self.ws.root), "model": self.model_ref, "dataset": self.data_ref,
                "configs": [c.to_dict() for c in configs], "variant_id": variant_id, "name": name,
                "sweep_id": self.sweep_id, "variant_kwargs": self.variant_kwargs}

    def run(self, pieces: list[dict], progress: TaskProgressFn | None, cancel: CancelFn) -> list[TaskResult]:
        """Measure the pieces (Ray or in-process); results in order."""
        if self.executor is None:
            self.executor = _executor_for(self.use_ray, self.live)
        use_ray = self.executor.kind == "ray"
        with primed({} if use_ray else self.live):
            results = map_tasks(measure_piece, pieces, progress, cancel, use_ray=use_ray,
                                threads_per_task=self.threads, cleanup=drop_incomplete)
        self.tasks.extend({"variant_id": pieces[r.index]["variant_id"], **r.to_dict(), "value": None}
                          for r in results)
        return results


def _executor_for(use_ray: bool | None, live: dict) -> Executor:
    ex = executor(use_ray)
    if ex.kind == "ray" and live.get("_not_shareable"):
        return Executor("in-process", reason=live["_not_shareable"])
    return ex


def measurer(model: nn.Module, base: Record, data: ImageDataset, ws: Workspace, *, sweep_id: str,
             use_ray: bool | None = None, threads: int = 1, data_ref: dict | None = None,
             variant_kwargs: dict | None = None) -> Measurer:
    """A :class:`Measurer` for variants of ``model`` (stored as ``base.id``) on ``data`` in ``ws``.

    Ray workers load the model from the workspace (checked against the hash of ``model``'s weights) and
    the data from ``data_ref`` (default: the dataset's registered key). When either cannot be shared —
    the model is not stored, or the data has no reference — the pieces run in-process.
    """
    kwargs = dict(variant_kwargs or {})
    if "device" in kwargs:
        kwargs["device"] = str(kwargs["device"])
    json.dumps(kwargs)  # pieces are JSON: only plain settings (latency_repeats, device …)
    mref = model_ref(model, base.id, base.arch, ws.root)
    live: dict = {}
    try:
        dref = data_ref or dataset_ref(data)
    except ValueError as exc:
        dref = {"key": data.id, "path": "", "preprocessing": None, "id": data.id}
        live["_not_shareable"] = f"the dataset cannot be loaded by workers: {exc}"
    stored = ws.has_model(base.id) or ws.load_variant(base.id) is not None
    if not stored:
        live["_not_shareable"] = f"model {base.id!r} is not stored in the workspace"
    live[ref_key(dref)] = data
    live[ref_key(mref)] = model
    return Measurer(ws=ws, model_ref=mref, data_ref=dref, sweep_id=sweep_id, use_ray=use_ray, threads=threads,
                    variant_kwargs=kwargs, live=live)


def sweep_id_for(model: nn.Module, base: Record, data: ImageDataset, candidates: list, *extra: Any) -> str:
    """Deterministic sweep id from the parent's weights, the data, the candidates and settings."""
    return stable_id(base.id, weights_hash(model), data.id, len(data.y_test), candidates, *extra,
                     prefix="s")


# --- the search ------------------------------------------------------------------------------------------

def search(model: nn.Module, base: Record, data: ImageDataset, ws: Workspace, budget: float = 0.01,
           candidates: list[list[dict]] | None = None, strategy: str = "grid", cost: str = "size",
           keep_all: bool = False, screen_samples: int = 200, rungs: int = 3, seed: int = 0,
           progress: ProgressFn | None = None, cancel: CancelFn | None = None, *,
           use_ray: bool | None = None, threads: int = 1, sweep_id: str | None = None,
           data_ref: dict | None = None, task_progress: TaskProgressFn | None = None,
           space: dict | None = None, trials: int = 24, population: int = 8, **variant_kwargs) -> SearchResult:
    """Search ``candidates`` (default :func:`default_grid`) and return the frontier within ``budget``.

    Args:
        model: The base model (never changed).
        base: Its record (id, arch and test accuracy are used).
        data: The dataset.
        ws: Workspace receiving the variants.
        budget: Largest accepted test-accuracy drop, as a fraction (0.01 = one point).
        candidates: Pipelines as lists of config dicts (grid, halving).
        strategy: "grid" (measure all), "halving" (screen on held-out train samples first) or "nsga2".
        cost: Cost axis of the frontier (and NSGA-II's second objective).
        keep_all: Keep every measured variant in the workspace (default: only frontier ones).
        screen_samples: Samples of the first screening rung (doubling each rung).
        rungs: Screening rungs.
        seed: Seed of the screening split and of NSGA-II.
        progress: ``progress(message, fraction)`` for the whole search.
        cancel: Returns True to stop (raises ``Cancelled``; complete variants stay, nothing half-written).
        use_ray: Run the measurements on Ray (True), in-process (False) or as configured (None).
        threads: Intra-op threads of each measurement (the same in Ray and in-process).
        sweep_id: Prefix of the variant ids (default: a hash of the inputs, so a repeated search reuses
            its complete records).
        data_ref: How workers load the data (default: the dataset's registered key).
        task_progress: ``task_progress(index, message, fraction)`` for each measurement.
        space: NSGA-II's pipeline space (default :func:`default_space`).
        trials: NSGA-II trials in all (duplicates of a pipeline are measured once).
        population: NSGA-II population (trials measured in parallel per generation).
        **variant_kwargs: Passed to ``make_variant`` (JSON-able: ``latency_repeats``, ``device``).
    """
    if not 0 <= budget <= 1:
        raise ValueError(_("the budget is an accuracy drop between 0 and 1, got {budget!r}").format(budget=budget))
    if strategy not in ("grid", "halving", "nsga2"):
        raise ValueError(_("strategy must be 'grid', 'halving' or 'nsga2', got {strategy!r}").format(
            strategy=strategy))
    cost_of(base, cost)  # validates the axis name
    report = progress or (lambda m, f: None)
    stop = cancel or (lambda: False)
    if strategy == "nsga2":
        sp = space or default_space()
        parse_space(sp)
        sid = sweep_id or sweep_id_for(model, base, data, sp, "nsga2", seed, threads, variant_kwargs)
        meas = measurer(model, base, data, ws, sweep_id=sid, use_ray=use_ray, threads=threads, data_ref=data_ref,
                        variant_kwargs=variant_kwargs)
        result = _nsga2(meas, base, budget, cost, sp, trials, population, seed, report, task_progress, stop)
    else:
        cands = parse_candidates(candidates)
        rows = [{"candidate": describe_configs(c, settings=1), "configs": [x.to_dict() for x in c],
                 "status": "pending"} for c in cands]
        sid = sweep_id or sweep_id_for(model, base, data, [r["configs"] for r in rows], threads, variant_kwargs)
        meas = measurer(model, base, data, ws, sweep_id=sid, use_ray=use_ray, threads=threads, data_ref=data_ref,
                        variant_kwargs=variant_kwargs)
        if strategy == "halving":
            alive = _screen(model, data, cands, budget, base.arch, rows, screen_samples, rungs, seed, report, stop)
            lo = 0.5
        else:
            alive, lo = list(range(len(cands))), 0.0
        result = SearchResult(base=base, budget=budget, cost=cost, strategy=strategy, tried=rows, sweep_id=sid)
        pieces = [meas.piece(cands[i], f"{sid}-{i:03d}", f"search · {rows[i]['candidate']}") for i in alive]
        names = [rows[i]["candidate"] for i in alive]
        results = meas.run(pieces, _aggregate(report, task_progress, names, lo, 1.0), stop)
        made = _fill_rows(results, [rows[i] for i in alive], base, budget, cost)
        if any(r.status == "cancelled" for r in results):
            raise Cancelled(_("cancelled by the user"))
        result.measured = made
    result.executor = meas.executor.to_dict() if meas.executor else {}
    result.tasks = meas.tasks
    return _finish(result, ws, keep_all, report)


def _aggregate(report: ProgressFn, task_progress: TaskProgressFn | None, names: list[str], lo: float,
               hi: float) -> TaskProgressFn:
    """Per-piece progress → one monotone search progress (and the per-piece callback)."""
    fracs = [0.0] * len(names)
    shown = [lo]

    def on_task(i: int, message: str, fraction: float) -> None:
        if task_progress is not None:
            task_progress(i, message, fraction)
        fracs[i] = max(fracs[i], fraction)
        overall = lo + (hi - lo) * sum(fracs) / max(1, len(fracs))
        shown[0] = max(shown[0], min(overall, hi))
        report(f"{names[i]}: {message}", shown[0])

    return on_task


def _fill_rows(results: list[TaskResult], rows: list[dict], base: Record, budget: float, cost: str) -> list[Record]:
    made = []
    for res, row in zip(results, rows):
        row.update(node=res.node, threads=res.threads, attempts=res.attempts, seconds=round(res.seconds, 3))
        if res.status == "cancelled":
            row["status"] = "cancelled"
            continue
        if not res.ok:
            row["status"] = f"failed: {res.error[:200]}"
            continue
        rec = Record.from_dict(res.value["record"])
        made.append(rec)
        drop = base.accuracy - rec.accuracy
        row.update(record_id=rec.id, accuracy=rec.accuracy, drop=drop, cost=cost_of(rec, cost),
                   reused=bool(res.value.get("reused")),
                   status="within budget" if drop <= budget + 1e-12 else "over budget")
    return made


def _finish(result: SearchResult, ws: Workspace, keep_all: bool, report: ProgressFn) -> SearchResult:
    base, budget, cost = result.base, result.budget, result.cost
    made = result.measured
    ok = [r for r in made if base.accuracy - r.accuracy <= budget + 1e-12]
    front = frontier([base, *ok], cost)
    front_ids = {r.id for r in front}
    for row in result.tried:
        row["frontier"] = row.get("record_id") in front_ids
    result.frontier = front
    if keep_all:
        result.records = made
    else:
        for r in made:
            if r.id not in front_ids:
                ws.delete_variant(r.id)
        result.records = [r for r in made if r.id in front_ids]
    report(_("done: {n_ok} of {n_tried} within budget, {n_front} on the frontier").format(
        n_ok=len(ok), n_tried=len(result.tried), n_front=len(front)), 1.0)
    return result


# --- NSGA-II (Optuna) ------------------------------------------------------------------------------------

def default_space() -> dict:
    """NSGA-II's default pipeline space: a pruning level (or none), then an encoding (or none).

    Each stage is one categorical choice; the pipeline is the chosen steps in order (both "none": the base).
    """
    return {"stages": [
        {"name": "prune", "choices": [None] + [{"method": "prune-unstructured", "sparsity": s}
                                              for s in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)]},
        {"name": "encode", "choices": [None] + [{"method": "quantize-weights", "bits": b} for b in (8, 6, 4, 3, 2)]
         + [{"method": "cluster", "k": k} for k in (32, 16, 8, 4, 2)]},
    ]}


def parse_space(space: dict) -> list[list[MethodConfig | None]]:
    """Validate a space (``{"stages": [{"name", "choices": [config dict or None, ...]}, ...]}``)."""
    stages = space.get("stages") if isinstance(space, dict) else None
    if not stages or not all(isinstance(s, dict) and s.get("choices") for s in stages):
        raise ValueError(_("a search space needs 'stages', each with a non-empty list of 'choices'"))
    return [[None if c is None else config_from_dict(c) for c in s["choices"]] for s in stages]


def space_size(space: dict) -> int:
    """Number of distinct points of a space (product of the stages' choices)."""
    return math.prod(len(s["choices"]) for s in space["stages"])


def pipeline_at(space: dict, choice: list[int]) -> list[dict]:
    """The pipeline (config dicts) of a point of the space (one choice index per stage)."""
    return [st["choices"][k] for st, k in zip(space["stages"], choice) if st["choices"][k] is not None]


def _nsga2(meas: Measurer, base: Record, budget: float, cost: str, space: dict, trials: int, population: int,
           seed: int, report: ProgressFn, task_progress: TaskProgressFn | None, stop: CancelFn) -> SearchResult:
    import optuna

    if trials < 1 or population < 2:
        raise ValueError(_("nsga2 needs trials >= 1 and population >= 2"))
    parse_space(space)

    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    result = SearchResult(base=base, budget=budget, cost=cost, strategy="nsga2", sweep_id=meas.sweep_id)
    by_key: dict[str, Record | None] = {}
    base_cost = cost_of(base, cost)
    done = 0
    while done < trials:
        if stop():
            raise Cancelled(_("cancelled by the user"))
        batch = [study.ask() for _ in range(min(population, trials - done))]
        pipes = [pipeline_at(space, [t.suggest_categorical(st["name"], list(range(len(st["choices"]))))
                                     for st in space["stages"]]) for t in batch]
        new: dict[str, list[dict]] = {}
        for p in pipes:
            k = _pipe_key(p)
            if p and k not in by_key:
                new.setdefault(k, p)
        rows = []
        pieces = []
        for k, p in new.items():
            cfgs = [config_from_dict(c) for c in p]
            name = describe_configs(cfgs, settings=1)
            rows.append({"candidate": name, "configs": p, "status": "pending", "generation": done // population})
            pieces.append(meas.piece(cfgs, f"{meas.sweep_id}-{stable_id(p, prefix='p', length=8)[2:]}",
                                     f"search · {name}"))
        lo, hi = done / trials, (done + len(batch)) / trials
        results = meas.run(pieces, _aggregate(report, task_progress, [r["candidate"] for r in rows], lo, hi), stop)
        made = _fill_rows(results, rows, base, budget, cost)
        result.tried.extend(rows)
        result.measured.extend(made)
        if any(r.status == "cancelled" for r in results):
            raise Cancelled(_("cancelled by the user"))
        recs = {r.id: r for r in made}
        for k, row in zip(new, rows):
            by_key[k] = recs.get(row.get("record_id", ""))
        for t, p in zip(batch, pipes):
            rec = by_key.get(_pipe_key(p)) if p else base
            if rec is None:
                study.tell(t, state=optuna.trial.TrialState.FAIL)
                continue
            t.set_constraint("accuracy_drop_over_budget", base.accuracy - rec.accuracy - budget)
            t.set_user_attr("record_id", rec.id)
            study.tell(t, [rec.accuracy, cost_of(rec, cost) if rec is not base else base_cost])
        done += len(batch)
    result.evaluations = len(result.tried)
    return result


def _pipe_key(pipeline: list[dict]) -> str:
    return json.dumps(pipeline, sort_keys=True)


def hypervolume(points: list[tuple[float, float]], ref_accuracy: float, ref_cost: float) -> float:
    """Area dominated by ``(accuracy, cost)`` points (maximise accuracy, minimise cost) within the reference box.

    The box is accuracy above ``ref_accuracy`` and cost below ``ref_cost``; points outside add nothing.
    """
    pts = sorted((c, a) for a, c in points if a > ref_accuracy and c < ref_cost and math.isfinite(a + c))
    area, best = 0.0, ref_accuracy
    for j, (c, a) in enumerate(pts):
        best = max(best, a)
        nxt = pts[j + 1][0] if j + 1 < len(pts) else ref_cost
        area += (nxt - c) * (best - ref_accuracy)
    return area


def search_hypervolume(records: list[Record], base: Record, budget: float, cost: str = "size") -> float:
    """Hypervolume of records within budget, cost relative to the base's (reference: budget edge, base cost)."""
    bc = cost_of(base, cost)
    return hypervolume([(r.accuracy, cost_of(r, cost) / bc) for r in records], base.accuracy - budget, 1.0)


def result_rows(result: SearchResult) -> list[dict]:
    """Flat table rows of a search (for the page and CSV)."""
    out = []
    for r in result.tried:
        screen = r.get("screen") or []
        out.append({"candidate": r["candidate"], "status": r["status"],
                    "test accuracy": r.get("accuracy", np.nan),
                    "drop (points)": 100 * r["drop"] if "drop" in r else np.nan,
                    "cost": r.get("cost", np.nan), "frontier": r.get("frontier", False),
                    "screen accuracy": screen[-1]["accuracy"] if screen else np.nan,
                    "record": r.get("record_id", "")})
    return out
