"""The compression engine's job kinds: a variant, a sensitivity analysis, a search.

Parameters are JSON (the base model by workspace id, the dataset by reference, method configs as dicts), so a
job is keyed by what it computes: two sessions asking for the same variant share one run. Each job writes its
results to the workspace (a variant's record last; a sensitivity table as a run) and returns a summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import compression  # noqa: F401 - registers the methods
from compression.registry import config_from_dict
from nnlab.i18n import _, num
from nnlab.jobs import refs
from nnlab.jobs.manager import JobContext, job_kind
from nnlab.workspace import Workspace, safe_key


def _model_and_data(params: dict, root: Path) -> tuple[Any, Any, Any]:
    model, record = refs.load_model(params["model_id"], root)
    return model, record, refs.load_data(params["data"], root)


def _steps(params: dict) -> str:
    return " → ".join(s.get("method", "?") for s in params.get("configs", [])) or _("(empty)")


@job_kind("variant", label=lambda p: _("Compress {model}: {steps}").format(model=p["model_id"], steps=_steps(p)))
def variant_job(params: dict, ctx: JobContext) -> dict:
    """Apply a pipeline of method configs to a base model and store the measured variant."""
    from compression.variant import make_variant

    model, record, data = _model_and_data(params, ctx.workspace)
    configs = [config_from_dict(c) for c in params["configs"]]
    rec = make_variant(model, record.id, record.arch, configs, data, Workspace(ctx.workspace),
                       name=params.get("name") or None, progress=ctx.progress, cancel=ctx.cancelled,
                       latency_repeats=params.get("latency_repeats") or None)
    return {"variant_id": rec.id, "name": rec.name, "accuracy": rec.accuracy, "size_bytes": rec.size_bytes,
            "runtime": rec.extra.get("runtime", ""), "weight_sparsity": _weight_sparsity(rec),
            "seconds": rec.extra.get("seconds")}


@job_kind("remeasure", label=lambda p: _("Measure again {n} record(s) of {model} with today's latency "
                                         "harness").format(n=len(p["ids"]), model=p["model_id"]))
def remeasure_job(params: dict, ctx: JobContext) -> dict:
    """Time a base (every fp32 runtime) and its variants (each beside the base in its own runtime) again, so
    records from an older harness become comparable; each record is rewritten atomically when done."""
    from compression.variant import remeasure_variant
    from nnlab.base import remeasure_latency
    from nnlab.measure import comparable

    model, record, data = _model_and_data(params, ctx.workspace)
    ws = Workspace(ctx.workspace)
    ids, done = list(params["ids"]), []
    for i, rid in enumerate(ids):
        ctx.check_cancel()
        ctx.progress(_("timing {rid} ({number}/{n_ids})").format(rid=rid, number=i + 1, n_ids=len(ids)),
                     i / max(1, len(ids)))
        if rid == record.id:
            if not comparable(record):
                ws.save_model_record(record.id, remeasure_latency(model, record, data.input_shape))
                refs.forget_model(record.id, ctx.workspace)  # the next load reads the new record
            done.append(rid)
            continue
        rec = ws.load_variant(rid)
        if rec is None or rec.parent != record.id or rec.status != "ok":
            continue
        ws.save_variant(remeasure_variant(ws, rec, model))
        done.append(rid)
    return {"remeasured": done}


def _weight_sparsity(rec: Any) -> float:
    from compression.compare import weight_sparsity

    return float(weight_sparsity(rec))


def sensitivity_key(model_id: str, kind: str, samples: int) -> str:
    return safe_key("sens", kind, model_id, str(samples))


@job_kind("sensitivity", label=lambda p: _("Sensitivity ({kind}) of {model}").format(kind=p["kind"],
                                                                                      model=p["model_id"]))
def sensitivity_job(params: dict, ctx: JobContext) -> dict:
    """Compress one layer at a time over a grid of levels; the table goes to the workspace's runs."""
    from compression import sensitivity

    from nnlab.jobs import pieces

    model, record, data = _model_and_data(params, ctx.workspace)
    table = sensitivity.layer_sensitivity(model, data, params["kind"], max_samples=int(params["samples"]),
                                          progress=ctx.progress, cancel=ctx.cancelled,
                                          model_ref=pieces.model_ref(model, record.id, record.arch, ctx.workspace),
                                          data_ref=pieces.dataset_ref(data, params["data"]["key"],
                                                                      params["data"].get("path", ""),
                                                                      params["data"].get("preprocessing")))
    key = sensitivity_key(params["model_id"], params["kind"], int(params["samples"]))
    Workspace(ctx.workspace).save_run(key, table.to_dict())
    return {"run": key, "layers": len(table.layers())}


@job_kind("search", label=lambda p: (_("Search within {points} points ({strategy}) on {model} on Ray")
                                     if p.get("use_ray") else _("Search within {points} points ({strategy}) on "
                                                                "{model}")).format(
    points=num(100 * p["budget"], "g"), strategy=p["strategy"], model=p["model_id"]))
def search_job(params: dict, ctx: JobContext) -> dict:
    """Try candidate pipelines (grid, successive halving or NSGA-II), each measurement a piece of work that
    runs in-process or as a Ray task; keep the frontier within the accuracy-drop budget."""
    from compression import search as csearch

    model, record, data = _model_and_data(params, ctx.workspace)
    tasks: dict[str, dict] = {}

    def task_progress(i: int, message: str, fraction: float) -> None:
        tasks[str(i)] = {"message": message, "fraction": round(float(fraction), 3)}
        ctx.progress(ctx._job.message, None, tasks=dict(tasks))

    extra = {"trials": int(params["trials"])} if params.get("trials") else {}
    res = csearch.search(model, record, data, Workspace(ctx.workspace), budget=float(params["budget"]),
                         candidates=params.get("candidates"), strategy=params["strategy"], cost=params["cost"],
                         keep_all=bool(params.get("keep_all")), progress=ctx.progress, cancel=ctx.cancelled,
                         use_ray=params.get("use_ray"), data_ref=params["data"], task_progress=task_progress,
                         **extra)
    return {"budget": res.budget, "tried": res.tried, "records": [r.id for r in res.records],
            "within_budget": [r.id for r in res.within_budget()],
            "frontier": [{"id": r.id, "name": r.name, "accuracy": r.accuracy} for r in res.frontier],
            "rows": csearch.result_rows(res)}


@job_kind("evaluate-variant", label=lambda p: _("Evaluate variant {variant} on the {split} split").format(
    variant=p["variant_id"], split=p["split"]))
def evaluate_variant_job(params: dict, ctx: JobContext) -> dict:
    """One pass of a stored variant (in the runtime that executes it) over a split; logits to the workspace."""
    import numpy as np

    from compression.compare import evaluate_model
    from compression.variant import load_variant_model
    from nnlab.jobs.kinds import eval_key

    ws = Workspace(ctx.workspace)
    rec = ws.load_variant(params["variant_id"])
    if rec is None:
        raise ValueError(_("no variant {variant_id!r} in the workspace").format(variant_id=params['variant_id']))
    data = refs.load_data(params["data"], ctx.workspace)
    ctx.progress(_("loading the variant"), 0.05)
    model = load_variant_model(ws, rec)
    ctx.check_cancel()
    ctx.progress(_("evaluating on the {split} split").format(split=params['split']), 0.1)
    ev = evaluate_model(model, data, params["split"])
    key = eval_key(rec.id, data.id, params["split"])
    ws.save_arrays(key, logits=ev.logits.astype(np.float32), labels=ev.labels.astype(np.int64))
    return {"key": key, "accuracy": ev.accuracy}
