"""Automatic search: try methods and levels, keep the whole Pareto frontier within an accuracy-drop budget.

Two strategies over the same candidate list (each candidate is a pipeline of method configs):

* ``grid`` — every candidate becomes a measured variant (:func:`compression.variant.make_variant`).
* ``halving`` — successive screening first: every candidate is applied and scored on a small held-out
  part of the *training* split; candidates whose drop clearly exceeds the budget (by more than two
  standard errors) are dropped, the sample doubles, and this repeats; only the survivors are turned
  into measured variants. It saves the measurement of hopeless candidates (and never tunes on test).

The budget is judged on the variants' test accuracy against the base record. The result is the frontier
(accuracy against the chosen cost) of the base plus every variant within budget, not one configuration.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compression.pareto import cost_of, frontier
from compression.registry import CompressContext, MethodConfig, apply_pipeline, config_from_dict
from nnlab.data import ImageDataset
from nnlab.records import Record
from nnlab.train import Cancelled, quick_eval
from nnlab.workspace import Workspace

_CPU = torch.device("cpu")
ProgressFn = Callable[[str, float], None]
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
            raise ValueError(f"candidate {i + 1}: {exc}") from exc
    if not out:
        raise ValueError("no candidate uses a registered method")
    return out


@dataclass
class SearchResult:
    """What a search produced.

    Attributes:
        base: The base record (the reference accuracy).
        budget: Largest accepted accuracy drop (fraction: 0.01 = one point).
        cost: The cost axis of the frontier ("size", "latency", "macs" …).
        strategy: "grid" or "halving".
        tried: One row per candidate: description, screening accuracies, record id, test drop, status.
        records: Every measured variant kept in the workspace.
        frontier: Frontier of the base plus the variants within budget, cheapest first.
    """

    base: Record
    budget: float
    cost: str
    strategy: str
    tried: list[dict] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    frontier: list[Record] = field(default_factory=list)

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
                raise Cancelled("cancelled by the user")
            report(f"screening: applying {rows[i]['candidate']}", 0.4 * (i + 1) / len(cands))
            ctx = CompressContext(data=data, cancel=cancel, workdir=Path(tmp) / f"c{i}", arch=arch, seed=seed)
            models[i] = apply_pipeline(model, cands[i], ctx).model.cpu().eval()
        for r in range(rungs):
            n = min(len(val), start * 2 ** r)
            idx = val[:n]
            _, base_acc = quick_eval(model, data, "train", indices=idx, device=_CPU)
            se = math.sqrt(max(base_acc * (1 - base_acc), 1.0 / n) / n)
            keep = []
            for i in alive:
                if cancel():
                    raise Cancelled("cancelled by the user")
                _, acc = quick_eval(models[i], data, "train", indices=idx, device=_CPU)
                rows[i].setdefault("screen", []).append({"samples": n, "accuracy": acc, "base": base_acc})
                if base_acc - acc <= budget + 2 * math.sqrt(2) * se:
                    keep.append(i)
                else:
                    rows[i]["status"] = f"dropped at screening ({n} samples: drop {100 * (base_acc - acc):.1f} points)"
            alive = keep
            report(f"screening rung {r + 1}/{rungs}: {len(alive)} of {len(cands)} left", 0.4 + 0.1 * (r + 1) / rungs)
            if n >= len(val) or not alive:
                break
    return alive


def search(model: nn.Module, base: Record, data: ImageDataset, ws: Workspace, budget: float = 0.01,
           candidates: list[list[dict]] | None = None, strategy: str = "grid", cost: str = "size",
           keep_all: bool = False, screen_samples: int = 200, rungs: int = 3, seed: int = 0,
           progress: ProgressFn | None = None, cancel: CancelFn | None = None, **variant_kwargs) -> SearchResult:
    """Search ``candidates`` (default :func:`default_grid`) and return the frontier within ``budget``.

    Args:
        model: The base model (never changed).
        base: Its record (id, arch and test accuracy are used).
        data: The dataset.
        ws: Workspace receiving the variants.
        budget: Largest accepted test-accuracy drop, as a fraction (0.01 = one point).
        candidates: Pipelines as lists of config dicts.
        strategy: "grid" (measure all) or "halving" (screen on held-out train samples first).
        cost: Cost axis of the frontier.
        keep_all: Keep every measured variant in the workspace (default: only frontier ones).
        screen_samples: Samples of the first screening rung (doubling each rung).
        rungs: Screening rungs.
        progress: ``progress(message, fraction)``.
        cancel: Returns True to stop (raises ``Cancelled``; variants made so far stay).
        **variant_kwargs: Passed to ``make_variant`` (e.g. ``latency_repeats``).
    """
    from compression.variant import describe_configs, make_variant

    if not 0 <= budget <= 1:
        raise ValueError(f"the budget is an accuracy drop between 0 and 1, got {budget!r}")
    if strategy not in ("grid", "halving"):
        raise ValueError(f"strategy must be 'grid' or 'halving', got {strategy!r}")
    cost_of(base, cost)  # validates the axis name
    cands = parse_candidates(candidates)
    report = progress or (lambda m, f: None)
    stop = cancel or (lambda: False)
    rows = [{"candidate": describe_configs(c, settings=1), "configs": [x.to_dict() for x in c], "status": "pending"}
            for c in cands]
    if strategy == "halving":
        alive = _screen(model, data, cands, budget, base.arch, rows, screen_samples, rungs, seed, report, stop)
        lo = 0.5
    else:
        alive, lo = list(range(len(cands))), 0.0
    result = SearchResult(base=base, budget=budget, cost=cost, strategy=strategy, tried=rows)
    made: list[Record] = []
    for k, i in enumerate(alive):
        if stop():
            raise Cancelled("cancelled by the user")
        span = (1.0 - lo) / max(1, len(alive))
        a = lo + k * span

        def sub(msg: str, frac: float, a: float = a, name: str = rows[i]["candidate"]) -> None:
            report(f"{name}: {msg}", a + span * frac)

        try:
            rec = make_variant(model, base.id, base.arch, cands[i], data, ws, name=f"search · {rows[i]['candidate']}",
                               progress=sub, cancel=stop, **variant_kwargs)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - one failing candidate must not end the search
            rows[i]["status"] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
            continue
        made.append(rec)
        drop = base.accuracy - rec.accuracy
        rows[i].update(record_id=rec.id, accuracy=rec.accuracy, drop=drop, cost=cost_of(rec, cost),
                       status="within budget" if drop <= budget + 1e-12 else "over budget")
    ok = [r for r in made if base.accuracy - r.accuracy <= budget + 1e-12]
    front = frontier([base, *ok], cost)
    front_ids = {r.id for r in front}
    for row in rows:
        row["frontier"] = row.get("record_id") in front_ids
    result.frontier = front
    if keep_all:
        result.records = made
    else:
        for r in made:
            if r.id not in front_ids:
                ws.delete_variant(r.id)
        result.records = [r for r in made if r.id in front_ids]
    report(f"done: {len(ok)} of {len(cands)} within budget, {len(front)} on the frontier", 1.0)
    return result


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
