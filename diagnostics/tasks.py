"""The diagnostics' job kinds: the data checks, the exact label check by k-fold retraining, learning curves.

Parameters are JSON (the model by workspace id, the dataset by reference); results go to the workspace as runs
(written once, at the end), so a cancelled or failed job leaves nothing behind and every page and session that
asks for the same check reads the same result.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from diagnostics import curves, datacheck, labels
from diagnostics.datacheck import data_checks_key, load_data_report  # noqa: F401 - also read from here
from nnlab.base import demo_config
from nnlab.jobs import refs
from nnlab.jobs.manager import JobContext, job_kind
from nnlab.models.registry import create_model
from nnlab.workspace import Workspace, safe_key


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


def report_path(ws: Workspace, model_id: str, data_id: str, variant_ids: list[str], e_goal: float | None) -> Path:
    """Where the report of a model (with these variants and this goal) is stored in the workspace."""
    import hashlib
    import json

    digest = hashlib.sha1(json.dumps([sorted(variant_ids), e_goal]).encode()).hexdigest()[:10]
    return ws.root / "reports" / f"{safe_key('report', model_id, data_id, digest)}.html"


@job_kind("report", label=lambda p: f"Report of {p['model_id']}"
                                    + (f" with {len(p.get('variant_ids', []))} variant(s)" if p.get("variant_ids") else ""))
def report_job(params: dict, ctx: JobContext) -> dict:
    """One self-contained HTML report (and a PDF when the system's browser can print it)."""
    return build_report(Workspace(ctx.workspace), params["model_id"], params["data"], params.get("variant_ids", []),
                        params.get("e_goal"), progress=ctx.progress, cancel=ctx.cancelled)


def build_report(ws: Workspace, model_id: str, data_ref: dict, variant_ids: list[str], e_goal: float | None,
                 progress=None, cancel=None, out: Path | None = None) -> dict:  # noqa: ANN001
    """Gather, render and store a model's report (the job and the CLI both call this)."""
    import time

    from diagnostics.report import gather, render_html, to_pdf
    from nnlab.errors import Cancelled
    from nnlab.jobs.kinds import ensure_evaluation
    from nnlab.workspace import atomic_write_text

    def say(message: str, fraction: float) -> None:
        if progress is not None:
            progress(message, fraction)
        if cancel is not None and cancel():
            raise Cancelled("cancelled by the user")

    def part(start: float, end: float):  # noqa: ANN202
        return lambda m, f: say(m, start + (end - start) * f)

    t0 = time.perf_counter()
    data = refs.load_data(data_ref, ws.root)
    model, record = refs.load_model(model_id, ws.root)
    say("the test split's predictions", 0.02)
    test = ensure_evaluation(ws, record.id, model, data, "test", part(0.02, 0.1), cancel)
    say("the training split's predictions", 0.1)
    train = ensure_evaluation(ws, record.id, model, data, "train", part(0.1, 0.2), cancel)
    variants = [v for v in (ws.load_variant(i) for i in variant_ids) if v is not None]
    rep = gather(model, record, data, ws, test, train, variants, e_goal, history=ws.load_history(record.id),
                 progress=part(0.2, 0.9))
    say("writing the report", 0.9)
    html = render_html(rep)
    path = out or report_path(ws, record.id, data.id, variant_ids, e_goal)
    atomic_write_text(path, html)
    say("printing the PDF", 0.92)
    pdf = path.with_suffix(".pdf")
    tmp = pdf.with_name(f".{pdf.name}.tmp.pdf")
    has_pdf = to_pdf(path, tmp)
    if has_pdf:
        tmp.replace(pdf)

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(ws.root))
        except ValueError:
            return str(p)

    return {"html": rel(path), "pdf": rel(pdf) if has_pdf else "", "bytes": path.stat().st_size,
            "pdf_bytes": pdf.stat().st_size if has_pdf else 0, "seconds": round(time.perf_counter() - t0, 1),
            "notes": rep.notes}
