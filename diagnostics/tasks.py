"""The diagnostics' job kinds: the data checks, the exact label check by k-fold retraining, learning curves.

Parameters are JSON (the model by workspace id, the dataset by reference); results go to the workspace as runs
(written once, at the end), so a cancelled or failed job leaves nothing behind and every page and session that
asks for the same check reads the same result.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from diagnostics import curves, datacheck, labels
from nnlab import refs
from nnlab.base import demo_config
from nnlab.jobs import JobContext, job_kind
from nnlab.models import create_model
from nnlab.workspace import Workspace, safe_key


def data_checks_key(model_id: str, data_id: str) -> str:
    """Workspace run key of the full data-check report of a model on a dataset."""
    return safe_key("datareport", model_id, data_id)


def load_data_report(ws: Workspace, model_id: str, data_id: str) -> datacheck.DataReport | None:
    payload = ws.load_run(data_checks_key(model_id, data_id))
    if not payload:
        return None
    try:
        return datacheck.DataReport.from_dict(payload)
    except (KeyError, TypeError, ValueError):
        return None


@job_kind("data-checks", label=lambda p: f"Data checks of {p['model_id']}")
def data_checks_job(params: dict, ctx: JobContext) -> dict:
    """Features of both splits, suspected label errors, train/test mismatch and near-duplicates."""
    data = refs.load_data(params["data"], ctx.workspace)
    model, _ = refs.load_model(params["model_id"], ctx.workspace)
    rep = datacheck.data_report(model, data, progress=ctx.progress, cancel=ctx.cancelled)
    ws = Workspace(ctx.workspace)
    ws.save_run(data_checks_key(params["model_id"], data.id), rep.to_dict())
    ws.save_run(datacheck.report_key(params["model_id"], data.id), rep.summary())  # what the diagnosis reads
    return rep.summary()


def retrain_key(model_id: str, data_id: str, n: int, folds: int) -> str:
    return safe_key("labels-retrain", model_id, data_id, str(n), str(folds))


@job_kind("label-retrain", label=lambda p: f"Label check by {p['folds']}-fold retraining of {p['model_id']}")
def label_retrain_job(params: dict, ctx: JobContext) -> dict:
    """Out-of-sample probabilities by retraining the architecture on k folds, then confident learning."""
    data = refs.load_data(params["data"], ctx.workspace)
    _, record = refs.load_model(params["model_id"], ctx.workspace)
    n, folds = int(params["n"]), int(params["folds"])
    sub = labels.subsample(data.y_train.numpy(), n)
    c, h, w = data.input_shape
    probs = labels.crossval_probs_retrain(
        lambda: create_model(record.arch, c, data.num_classes, (h, w)), data,
        replace(demo_config(data), eval_test=False), indices=sub, folds=folds,
        progress=ctx.train_progress(), cancel=ctx.cancelled)
    res = labels.find_label_issues(data.y_train.numpy()[sub], probs)
    out = {"indices": sub[res.indices].tolist(), "given": res.given.tolist(), "suggested": res.suggested.tolist(),
           "self_confidence": res.self_confidence.tolist(), "checked": res.checked}
    key = retrain_key(params["model_id"], data.id, n, folds)
    Workspace(ctx.workspace).save_run(key, out)
    return {"run": key, "flagged": len(out["indices"]), "checked": res.checked}


@job_kind("learning-curve", label=lambda p: f"Learning curve of {p['model_id']} "
                                            f"({', '.join(f'{f:.0%}' for f in p['fractions'])})")
def learning_curve_job(params: dict, ctx: JobContext) -> dict:
    """Retrain the architecture from scratch on nested subsets; the curve goes to the workspace."""
    data = refs.load_data(params["data"], ctx.workspace)
    _, record = refs.load_model(params["model_id"], ctx.workspace)
    fractions, epochs = [float(f) for f in params["fractions"]], int(params["epochs"])
    c, h, w = data.input_shape
    points = curves.learning_curve(lambda: create_model(record.arch, c, data.num_classes, (h, w)), data, fractions,
                                   replace(demo_config(data), epochs=epochs),
                                   progress=lambda f, m: ctx.progress(m, f), cancel=ctx.cancelled)
    key = curves.cache_key(params["model_id"], data.id, fractions, epochs)
    Workspace(ctx.workspace).save_run(key, {"points": [asdict(p) for p in points]})
    return {"run": key, "points": len(points)}
