"""The diagnostics' job kinds: the data checks, the exact label check by k-fold retraining, learning curves,
the Look-inside scans (channel scores over many samples, activation statistics over a batch).

Parameters are JSON (the model by workspace id, the dataset by reference); results go to the workspace as runs
(written once, at the end), so a cancelled or failed job leaves nothing behind and every page and session that
asks for the same check reads the same result.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from diagnostics import activations, curves, datacheck, features, labels
from diagnostics.datacheck import data_checks_key, load_data_report  # noqa: F401 - also read from here
from nnlab import i18n
from nnlab.base import demo_config
from nnlab.i18n import _, ngettext, num
from nnlab.jobs import refs
from nnlab.jobs.manager import JobContext, job_kind
from nnlab.models.registry import create_model
from nnlab.workspace import Workspace, WorkspaceError, safe_key


@job_kind("data-checks", label=lambda p: _("Data checks of {model}").format(model=p["model_id"]))
def data_checks_job(params: dict, ctx: JobContext) -> dict:
    """Features of both splits, suspected label errors, train/test mismatch and near-duplicates."""
    data = refs.load_data(params["data"], ctx.workspace)
    model, _record = refs.load_model(params["model_id"], ctx.workspace)
    rep = datacheck.data_report(model, data, progress=ctx.progress, cancel=ctx.cancelled)
    ws = Workspace(ctx.workspace)
    ws.save_run(data_checks_key(params["model_id"], data.id), rep.to_dict())
    ws.save_run(datacheck.report_key(params["model_id"], data.id), rep.summary())  # what the diagnosis reads
    return rep.summary()


def retrain_key(model_id: str, data_id: str, n: int, folds: int) -> str:
    return safe_key("labels-retrain", model_id, data_id, str(n), str(folds))


@job_kind("label-retrain", label=lambda p: _("Label check by {folds}-fold retraining of {model}").format(
    folds=p["folds"], model=p["model_id"]))
def label_retrain_job(params: dict, ctx: JobContext) -> dict:
    """Out-of-sample probabilities by retraining the architecture on k folds, then confident learning."""
    data = refs.load_data(params["data"], ctx.workspace)
    _model, record = refs.load_model(params["model_id"], ctx.workspace)
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


def _pieces_data_ref(data, ref: dict) -> dict:
    """How job pieces (Ray workers) load the job's dataset: its reference, with the id and fingerprint to check."""
    from nnlab.jobs import pieces

    return pieces.dataset_ref(data, ref["key"], ref.get("path", ""), ref.get("preprocessing"))


@job_kind("learning-curve", label=lambda p: _("Learning curve of {model} ({fractions})").format(
    model=p["model_id"], fractions=", ".join(num(f, ".0%") for f in p["fractions"])))
def learning_curve_job(params: dict, ctx: JobContext) -> dict:
    """Retrain the architecture from scratch on nested subsets; the curve goes to the workspace."""
    data = refs.load_data(params["data"], ctx.workspace)
    _model, record = refs.load_model(params["model_id"], ctx.workspace)
    fractions, epochs = [float(f) for f in params["fractions"]], int(params["epochs"])
    c, h, w = data.input_shape
    points = curves.learning_curve(lambda: create_model(record.arch, c, data.num_classes, (h, w)), data, fractions,
                                   replace(demo_config(data), epochs=epochs),
                                   progress=lambda f, m: ctx.progress(m, f), cancel=ctx.cancelled,
                                   arch=record.arch, data_ref=_pieces_data_ref(data, params["data"]))
    key = curves.cache_key(params["model_id"], data.id, fractions, epochs)
    Workspace(ctx.workspace).save_run(key, {"points": [asdict(p) for p in points]})
    return {"run": key, "points": len(points)}


# --- Look inside: scans over many samples -------------------------------------------------------------------
# Stored in the workspace under a key of their inputs (in this process's memory when the workspace is read-only).

_MEMORY: LRUCache = LRUCache(maxsize=16)  # bound: 16 results, least recently used out
_MEMORY_LOCK = threading.Lock()


def _remember(key: str, value: object) -> None:
    with _MEMORY_LOCK:
        _MEMORY[key] = value


def _recall(key: str) -> object | None:
    with _MEMORY_LOCK:
        return _MEMORY.get(key)


def channel_scores_key(model_id: str, data_id: str, layer: str, split: str, limit: int, reduce: str) -> str:
    return safe_key("chscores", model_id, data_id, layer, split, str(int(limit)), reduce)


def load_channel_scores(ws: Workspace, key: str) -> np.ndarray | None:
    """Stored :func:`diagnostics.features.channel_scores` (``N×C``; None when not computed yet)."""
    arrays = ws.load_arrays(key)
    if arrays is not None and "scores" in arrays:
        return arrays["scores"]
    value = _recall(key)
    return value if isinstance(value, np.ndarray) else None


@job_kind("channel-scores", label=lambda p: _("Channel scores of {layer} over {n} {split} samples ({reduce}) of "
                                              "{model}").format(layer=p["layer"], n=num(p["limit"], ",d"),
                                                                split=p["split"], reduce=p["reduce"],
                                                                model=p["model_id"]))
def channel_scores_job(params: dict, ctx: JobContext) -> dict:
    """Every channel's score of one layer for the first ``limit`` samples of a split (the Feature maps page)."""
    data = refs.load_data(params["data"], ctx.workspace)
    model, _record = refs.load_model(params["model_id"], ctx.workspace)
    layer, split, limit, reduce = params["layer"], params["split"], int(params["limit"]), params["reduce"]

    def progress(fraction: float) -> None:
        ctx.progress(_("{layer}: {n} samples").format(
            layer=layer, n=num(int(fraction * min(limit, len(data.labels(split)))), ",d")), fraction)
        ctx.check_cancel()

    scores = features.channel_scores(model, data, layer, split, limit, reduce, progress=progress)
    key = channel_scores_key(params["model_id"], data.id, layer, split, limit, reduce)
    try:
        Workspace(ctx.workspace).save_arrays(key, scores=scores)
    except WorkspaceError:
        _remember(key, scores)
    return {"key": key, "samples": int(scores.shape[0]), "channels": int(scores.shape[1]) if scores.ndim > 1 else 0}


def activation_stats_key(model_id: str, data_id: str, split: str, n: int, kind: str, bins: int,
                         variant_id: str = "") -> str:
    who = f"variant-{variant_id}" if variant_id else model_id
    return safe_key("actstats", who, data_id, split, str(int(n)), kind, str(int(bins)))


def load_activation_stats(ws: Workspace, key: str) -> list[activations.LayerActivation] | None:
    """Stored :func:`diagnostics.activations.activation_stats` (None when not computed yet)."""
    run = ws.load_run(key)
    if run is None:
        kept = _recall(key)
        run = kept if isinstance(kept, dict) else None
    if run is None or "layers" not in run:
        return None
    return [activations.LayerActivation.from_dict(d) for d in run["layers"]]


@job_kind("activation-stats", label=lambda p: _("Activation statistics of {model} over {n} {split} images "
                                                "({kind})").format(model=p.get("variant_id") or p["model_id"],
                                                                   n=num(p["n"], ",d"), split=p["split"],
                                                                   kind=p["kind"]))
def activation_stats_job(params: dict, ctx: JobContext) -> dict:
    """Each layer's output statistics over the first ``n`` images of a split (the Activations page).

    The model is the base ``model_id``, or the compressed variant ``variant_id`` when given.
    """
    data = refs.load_data(params["data"], ctx.workspace)
    ws = Workspace(ctx.workspace)
    if params.get("variant_id"):
        from compression.variant import load_variant_model  # the variant's own loader (compression sits above)

        rec = ws.load_variant(params["variant_id"])
        if rec is None:
            raise ValueError(_("no variant {variant} in the workspace").format(variant=repr(params["variant_id"])))
        ctx.progress(_("loading the variant"), 0.0)
        model = load_variant_model(ws, rec)
    else:
        model, _record = refs.load_model(params["model_id"], ctx.workspace)
    split, n, kind, bins = params["split"], int(params["n"]), params["kind"], int(params["bins"])
    x, _y = data.tensors(split, np.arange(n))

    def progress(fraction: float) -> None:
        ctx.progress(_("{done} of {n} images").format(done=num(int(fraction * n), ",d"), n=num(n, ",d")), fraction)
        ctx.check_cancel()

    stats = activations.activation_stats(model, x, kind=kind, bins=bins, batch_size=32, progress=progress)
    key = activation_stats_key(params["model_id"], data.id, split, n, kind, bins, params.get("variant_id", ""))
    run = {"layers": [s.to_dict() for s in stats]}
    try:
        ws.save_run(key, run)
    except WorkspaceError:
        _remember(key, run)
    return {"key": key, "layers": len(stats)}


def report_path(ws: Workspace, model_id: str, data_id: str, variant_ids: list[str], e_goal: float | None,
                lang: str = i18n.DEFAULT) -> Path:
    """Where the report of a model (with these variants, this goal, in this language) is stored in the workspace."""
    import hashlib
    import json

    key = [sorted(variant_ids), e_goal] + ([] if i18n.normalize(lang) == i18n.DEFAULT else [i18n.normalize(lang)])
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]
    return ws.root / "reports" / f"{safe_key('report', model_id, data_id, digest)}.html"


def _report_label(p: dict) -> str:
    n = len(p.get("variant_ids", []))
    if not n:
        return _("Report of {model}").format(model=p["model_id"])
    return ngettext("Report of {model} with {n} variant(s)", "Report of {model} with {n} variant(s)", n).format(
        model=p["model_id"], n=n)


@job_kind("report", label=_report_label)
def report_job(params: dict, ctx: JobContext) -> dict:
    """One self-contained HTML report (and a PDF when the system's browser can print it), in ``params["lang"]``
    (default: the language of the session that asked; put it in the params so each language is its own job)."""
    return build_report(Workspace(ctx.workspace), params["model_id"], params["data"], params.get("variant_ids", []),
                        params.get("e_goal"), progress=ctx.progress, cancel=ctx.cancelled, lang=params.get("lang"))


def build_report(ws: Workspace, model_id: str, data_ref: dict, variant_ids: list[str], e_goal: float | None,
                 progress=None, cancel=None, out: Path | None = None, lang: str | None = None) -> dict:  # noqa: ANN001
    """Gather, render and store a model's report (the job and the CLI both call this), in ``lang`` (default: the
    current language): headings, labels and sentences translated, the same numbers."""
    with i18n.language(lang or i18n.get_language()) as code:
        return _build_report(ws, model_id, data_ref, variant_ids, e_goal, progress, cancel, out, code)


def _build_report(ws: Workspace, model_id: str, data_ref: dict, variant_ids: list[str], e_goal: float | None,
                  progress, cancel, out: Path | None, lang: str) -> dict:  # noqa: ANN001
    import time

    from diagnostics.report import gather, render_html, to_pdf
    from nnlab.errors import Cancelled
    from nnlab.jobs.kinds import ensure_evaluation
    from nnlab.workspace import atomic_write_text

    def say(message: str, fraction: float) -> None:
        if progress is not None:
            progress(message, fraction)
        if cancel is not None and cancel():
            raise Cancelled(_("cancelled by the user"))

    def part(start: float, end: float):  # noqa: ANN202
        return lambda m, f: say(m, start + (end - start) * f)

    t0 = time.perf_counter()
    data = refs.load_data(data_ref, ws.root)
    model, record = refs.load_model(model_id, ws.root)
    say(_("the test split's predictions"), 0.02)
    test = ensure_evaluation(ws, record.id, model, data, "test", part(0.02, 0.1), cancel)
    say(_("the training split's predictions"), 0.1)
    train = ensure_evaluation(ws, record.id, model, data, "train", part(0.1, 0.2), cancel)
    variants = [v for v in (ws.load_variant(i) for i in variant_ids) if v is not None]
    rep = gather(model, record, data, ws, test, train, variants, e_goal, history=ws.load_history(record.id),
                 progress=part(0.2, 0.9), lang=lang)
    say(_("writing the report"), 0.9)
    html = render_html(rep, lang)
    path = out or report_path(ws, record.id, data.id, variant_ids, e_goal, lang)
    atomic_write_text(path, html)
    say(_("printing the PDF"), 0.92)
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
            "notes": rep.notes, "lang": lang}


# --- a variant against its base --------------------------------------------------------------------------

def variant_diagnosis_key(model_id: str, variant_id: str, data_id: str, samples: int) -> str:
    return safe_key("variantdiag", model_id, variant_id, data_id, str(samples))


def _base_and_variant(params: dict, ctx: JobContext) -> tuple:
    """``(data, base model, base record, workspace, variant record, variant model)`` of a job on a variant of
    ``params["model_id"]``; ``ValueError`` when the variant is not one of that model's."""
    from compression.variant import load_variant_model

    data = refs.load_data(params["data"], ctx.workspace)
    base, base_rec = refs.load_model(params["model_id"], ctx.workspace)
    ws = Workspace(ctx.workspace)
    rec = ws.load_variant(params["variant_id"])
    if rec is None or rec.parent != params["model_id"]:
        raise ValueError(_("no variant {variant} of {model} in the workspace").format(
            variant=repr(params["variant_id"]), model=repr(params["model_id"])))
    ctx.progress(_("loading the variant"), 0.05)
    return data, base, base_rec, ws, rec, load_variant_model(ws, rec)


@job_kind("variant-diagnosis", label=lambda p: _("Diagnose variant {variant} against {model}").format(
    variant=p["variant_id"], model=p["model_id"]))
def variant_diagnosis_job(params: dict, ctx: JobContext) -> dict:
    """Per-layer error of a variant against its base on the first ``samples`` test images, and accuracy with
    each of the ``top_k`` worst layers put back (:mod:`diagnostics.variantdiff`); the table goes to a run."""
    from compression.compare import runs_outside_pytorch
    from diagnostics import variantdiff
    from nnlab.i18n import _

    data, base, _base_rec, ws, rec, variant = _base_and_variant(params, ctx)
    n = min(int(params.get("samples", 256)), len(data.labels("test")))
    x, y = data.tensors("test", np.arange(n))
    out: dict = {"samples": n, "variant_id": rec.id, "runtime": rec.latency.get("1", {}).get("runtime", "")}
    if runs_outside_pytorch(variant):
        from diagnostics import runtimediff

        ctx.progress(_("per-layer error from {runtime}'s intermediate outputs").format(runtime=out["runtime"]), 0.2)
        note = ""
        try:
            errors = runtimediff.runtime_layer_errors(base, rec, ws.root / rec.artifact, x)
        except ValueError as exc:  # e.g. a torch.ao FX variant, or a QOperator graph
            errors, note = [], str(exc)
        ctx.check_cancel()
        if errors:
            score = runtimediff.added_error(errors)
            top = [e.name for e in sorted(errors, key=lambda e: -score[e.name])[: int(params.get("top_k", 5))]
                   if score[e.name] > 0]
            acc_v = runtimediff._accuracy(variant.runner, x, y.numpy())
            ctx.progress(_("re-quantizing with each of the {n} layers with the largest error left in float")
                         .format(n=len(top)), 0.5)
            acc_b, rec_rows = runtimediff.runtime_recovery(
                base, data, rec, top, x, y.numpy(), acc_v,
                progress=lambda m, f: (ctx.progress(m, 0.5 + 0.45 * f), ctx.check_cancel()))
            note = "" if all(np.isfinite(e.local_rel) for e in errors) else \
                _("OpenVINO: the error is measured where both networks see the same images (accumulated) only")
            out.update(errors=[e.to_dict() for e in errors], recovery=[r.to_dict() for r in rec_rows],
                       base_accuracy=acc_b, variant_accuracy=acc_v, note=note)
        else:
            out.update(errors=[], recovery=[], note=note)
    else:
        ctx.progress(_("per-layer error"), 0.2)
        errors = variantdiff.layer_errors(base, variant, x)
        ctx.check_cancel()
        ranked = sorted((e for e in errors if np.isfinite(e.local_rel)), key=lambda e: -e.local_rel)
        top = [e.name for e in ranked[: int(params.get("top_k", 5))]]
        ctx.progress(_("putting back the {n} layers with the largest error, one at a time").format(n=len(top)), 0.5)
        acc_b, acc_v, rec_rows = variantdiff.recovery(base, variant, x, y.numpy(), [[t] for t in top])
        out.update(errors=[e.to_dict() for e in errors], recovery=[r.to_dict() for r in rec_rows],
                   base_accuracy=acc_b, variant_accuracy=acc_v, note="")
    key = variant_diagnosis_key(params["model_id"], rec.id, data.id, n)
    ws.save_run(key, out)
    return {"run": key, "layers": len(out["errors"])}


@job_kind("variant-repair", label=lambda p: _("Put layers of {variant} back until within {budget} points").format(
    variant=p["variant_id"], budget=num(100 * p["budget"], "g")))
def variant_repair_job(params: dict, ctx: JobContext) -> dict:
    """Rank the variant's layers by what putting each back recovers, put them back in that order until the
    drop on ``samples`` test images is within ``budget``, and store the result as a new variant, measured like
    any other (its restored layers listed in the record)."""
    from compression.compare import runs_outside_pytorch
    from compression.variant import store_model_variant
    from diagnostics import variantdiff

    data, base, base_rec, ws, rec, variant = _base_and_variant(params, ctx)
    budget = float(params["budget"])
    if runs_outside_pytorch(variant):  # an int8 runtime: re-quantize with the worst layers left in float
        from diagnostics import runtimediff

        new = runtimediff.repair_runtime_variant(
            base, base_rec.id, base_rec.arch, rec, data, ws, budget, int(params.get("samples", 512)),
            int(params.get("max_layers", 16)), progress=ctx.progress, cancel=ctx.cancelled)
        return {"variant_id": new.id, "restored_layers": new.extra["restored_layers"], "accuracy": new.accuracy}
    n = min(int(params.get("samples", 512)), len(data.labels("test")))
    x, y = data.tensors("test", np.arange(n))
    ctx.progress(_("ranking the layers by what putting each back recovers"), 0.1)
    errors = variantdiff.layer_errors(base, variant, x[:64])  # candidates: the layers with the largest own error
    by_error = sorted((e for e in errors if np.isfinite(e.local_rel) and e.local_rel > 0), key=lambda e: -e.local_rel)
    names = [e.name for e in by_error[: int(params.get("max_layers", 16))]]
    _acc_b, _acc_v, ranking = variantdiff.recovery(base, variant, x, y.numpy(), [[nm] for nm in names])
    ctx.check_cancel()
    order = [r.layers[0] for r in ranking if r.accuracy > 0]
    ctx.progress(_("putting layers back until the drop is within the budget"), 0.4)
    chosen, acc_b, acc = variantdiff.restore_until(base, variant, x, y.numpy(), order, budget)
    ctx.check_cancel()
    ctx.progress(ngettext("measuring the repaired variant ({n} layer(s) back)",
                          "measuring the repaired variant ({n} layer(s) back)", len(chosen)).format(n=len(chosen)), 0.6)
    repaired = variantdiff.put_back(base, variant, chosen)
    config = {"method": "restore", "from_variant": rec.id, "layers": chosen, "budget": budget, "samples": n}
    new = store_model_variant(repaired, base, base_rec.id, base_rec.arch, config, data, ws,
                              name=f"{rec.name} · {len(chosen)} layer(s) back (≤ {100 * budget:g} pt)",
                              extra={"restored_layers": chosen, "from_variant": rec.id,
                                     "repair_samples": n, "repair_accuracy": acc, "repair_base_accuracy": acc_b})
    return {"variant_id": new.id, "restored_layers": chosen, "accuracy": new.accuracy}


def flip_attributions_key(model_id: str, variant_id: str, data_id: str, method: str, indices: list[int]) -> str:
    return safe_key("flipattr", model_id, variant_id, data_id, method, ",".join(str(i) for i in indices))


@job_kind("flip-attributions", label=lambda p: ngettext(
    "Attributions of {n} flipped samples of {variant}", "Attributions of {n} flipped samples of {variant}",
    len(p["indices"])).format(n=len(p["indices"]), variant=p["variant_id"]))
def flip_attributions_job(params: dict, ctx: JobContext) -> dict:
    """Base and variant attributions for the same target (the base's prediction) on the given test samples, with
    their rank correlation (:func:`diagnostics.variantdiff.attribution_pairs`); maps stored as arrays."""
    from compression.compare import runs_outside_pytorch
    from compression.variant import load_variant_model
    from diagnostics import variantdiff

    data = refs.load_data(params["data"], ctx.workspace)
    base, _record = refs.load_model(params["model_id"], ctx.workspace)
    ws = Workspace(ctx.workspace)
    rec = ws.load_variant(params["variant_id"])
    if rec is None:
        raise ValueError(_("no variant {variant} in the workspace").format(variant=repr(params["variant_id"])))
    variant = load_variant_model(ws, rec)
    if runs_outside_pytorch(variant):
        raise ValueError(_("{name} runs outside PyTorch: its attributions need its PyTorch model").format(
            name=rec.name))
    idx = [int(i) for i in params["indices"]]
    x, _y = data.tensors("test", np.array(idx, dtype=np.int64))
    import torch

    with torch.no_grad():
        targets = base(x).argmax(1).tolist()
    ctx.progress(_("{method} on {n} samples, base and variant").format(method=params["method"], n=len(idx)), 0.1)
    pairs = variantdiff.attribution_pairs(base, variant, x, targets, params["method"])
    key = flip_attributions_key(params["model_id"], rec.id, data.id, params["method"], idx)
    ws.save_arrays(key, base=np.stack([p["base"] for p in pairs]).astype(np.float32),
                   variant=np.stack([p["variant"] for p in pairs]).astype(np.float32),
                   similarity=np.array([p["similarity"] for p in pairs], np.float64),
                   targets=np.array(targets, np.int64), indices=np.array(idx, np.int64))
    return {"key": key, "similarity": [p["similarity"] for p in pairs]}
