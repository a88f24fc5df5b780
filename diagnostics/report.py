"""One report per model: a single self-contained HTML file (and a PDF when a browser can print it).

The report is written in one language (``lang``; default: the current one): every heading, label and sentence
through the translation layer, numbers with the language's decimal separator, the same numbers in every language.

Sections: the model card (architecture, preprocessing, data, accuracy, size, latency), the diagnosis against
E_goal with its evidence, per-class metrics and the confusion matrix, the worst errors with their attributions,
the data-check results, and the Pareto plot with the chosen variants side by side. Every number comes from the
same functions and stored results the pages use. Figures are embedded as images (base64 ``data:`` URIs): the
file needs no network, no script and no other file.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from diagnostics import datacheck
from diagnostics.curves import cached_curves, error_slope
from diagnostics.diagnosis import default_goal, diagnose, regime_label, verdict_label
from diagnostics.errors import METRIC_COLUMNS, class_metrics, confusion, confusion_figure, rank_samples
from nnlab import i18n
from nnlab.data.sets import ImageDataset
from nnlab.data.viz import as_image, display_scale
from nnlab.evaluate import EvalResult
from nnlab.i18n import N_, _, num
from nnlab.measure import speedups
from nnlab.records import Record
from nnlab.workspace import Workspace

SECTIONS = ("model-card", "diagnosis", "per-class", "worst-errors", "data-checks", "variants")
# Section headings (translated where the report is written, in its language).
HEADINGS = {"model-card": N_("Model card"), "diagnosis": N_("Diagnosis against the goal"),
            "per-class": N_("Per-class metrics and confusion matrix"),
            "worst-errors": N_("Worst errors and their attributions"), "data-checks": N_("Data checks"),
            "variants": N_("Compressed variants"), "notes": N_("Notes")}


@dataclass
class ReportData:
    """What a report shows, gathered once (tests compare it with what the pages show)."""

    record: Record
    data: ImageDataset
    test: EvalResult
    train: EvalResult
    e_goal: float
    diagnosis: Any
    metrics: Any
    cm: np.ndarray
    worst: list[dict] = field(default_factory=list)
    data_summary: dict | None = None
    label_issues: list[dict] = field(default_factory=list)
    variants: list[Record] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)  # name → data URI
    notes: list[str] = field(default_factory=list)
    lang: str = i18n.DEFAULT  # the language its words (diagnosis, figures, notes) were gathered in
    facts: Any = None  # what the diagnosis was made from (render_html in another language diagnoses again)


def _png_uri(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure_uri(fig: Any, notes: list[str], width: int = 900, height: int = 420) -> str:
    """A Plotly figure as an embedded SVG (kaleido in the system's browser), or "" with a note when unavailable."""
    try:
        from nnlab import figures

        svg = figures.to_svg(fig, width=width, height=height)
    except Exception as exc:  # noqa: BLE001 - the report still has every table; say why a figure is missing
        notes.append(_("A figure could not be rendered ({error}).").format(
            error=f"{type(exc).__name__}: {str(exc)[:160]}"))
        return ""
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()


def gather(model: nn.Module, record: Record, data: ImageDataset, ws: Workspace, test: EvalResult,
           train: EvalResult, variants: list[Record] | None = None, e_goal: float | None = None,
           worst: int = 8, attribution: str = "integrated_gradients", history: list[dict] | None = None,
           progress: Any = None, lang: str | None = None) -> ReportData:
    """Collect every section's numbers and pictures (the model is only read: attributions use a copy).

    Words that are gathered here (the diagnosis, figure titles, notes) are in ``lang`` (default: the current
    language); render the data in the same language.
    """
    with i18n.language(lang or i18n.get_language()) as code:
        rep = _gather(model, record, data, ws, test, train, variants, e_goal, worst, attribution, history, progress)
        rep.lang = code
        return rep


def _gather(model: nn.Module, record: Record, data: ImageDataset, ws: Workspace, test: EvalResult,
            train: EvalResult, variants: list[Record] | None, e_goal: float | None, worst: int, attribution: str,
            history: list[dict] | None, progress: Any) -> ReportData:
    notes: list[str] = []
    e_test, e_train = test.error, train.error
    goal = default_goal(e_test) if e_goal is None else float(e_goal)
    summary = ws.load_run(datacheck.report_key(record.id, data.id))
    curves = cached_curves(ws, record.id, data.id)
    slope = error_slope(curves[0][1]) if curves else None
    facts = datacheck.facts_from({**datacheck.cheap_summary(data), **(summary or {})}, history or [], slope)
    diag = diagnose(e_train, e_test, goal, facts, n_test=len(test.labels))
    k = data.num_classes
    metrics = class_metrics(test.labels, test.preds, k)
    cm = confusion(test.labels, test.preds, k)
    rep = ReportData(record=record, data=data, test=test, train=train, e_goal=goal, diagnosis=diag, metrics=metrics,
                     cm=cm, data_summary=summary, variants=list(variants or []), notes=notes, facts=facts)
    if progress is not None:
        progress(_("figures: confusion matrix"), 0.2)
    rep.figures["confusion"] = _figure_uri(confusion_figure(cm, data.classes), notes, 700, 600)
    if progress is not None:
        progress(_("worst errors and their attributions"), 0.35)
    rep.worst = _worst(model, data, test, worst, attribution, notes)
    rep.label_issues = _label_issues(ws, record.id, data)
    if rep.variants:
        if progress is not None:
            progress(_("figures: Pareto plot"), 0.8)
        from compression.pareto import pareto_figure

        rep.figures["pareto"] = _figure_uri(pareto_figure([record, *rep.variants], "size", base_id=record.id),
                                            notes)
    return rep


def _worst(model: nn.Module, data: ImageDataset, test: EvalResult, n: int, method: str,
           notes: list[str]) -> list[dict]:
    import copy

    from diagnostics import attributions as attr

    wrong = np.flatnonzero(test.preds != test.labels)
    order = rank_samples(test.probs, test.losses, test.labels, "loss")
    order = [int(i) for i in order if i in set(wrong.tolist())][:n]
    out = []
    work = copy.deepcopy(model).eval().cpu()
    scale = display_scale(data.input_shape[1], 96)
    prep = None
    failed = False
    for i in order:
        x8 = data.x_test[i:i + 1]
        item = {"index": i, "true": data.classes[int(test.labels[i])], "pred": data.classes[int(test.preds[i])],
                "confidence": float(test.probs[i].max()), "loss": float(test.losses[i]),
                "image": _png_uri(as_image(x8[0], scale)), "attribution": ""}
        try:
            if prep is None:
                prep = attr.prepare(work, data.normalize(x8))
            a = attr.attribute(prep, data.normalize(x8), method, int(test.preds[i]))
            shown = attr.render(a.values, as_image(x8[0]), style="heat", scale=scale)
            item["attribution"] = _png_uri(shown)
        except Exception as exc:  # noqa: BLE001 - a model the method does not fit: the image without the map
            if not failed:  # one note for the whole gallery
                failed = True
                notes.append(_("No {method} attributions for this model ({error}).").format(
                    method=method, error=f"{type(exc).__name__}: {str(exc)[:120]}"))
        out.append(item)
    return out


def _label_issues(ws: Workspace, model_id: str, data: ImageDataset, n: int = 12) -> list[dict]:
    from diagnostics.datacheck import load_data_report

    rep = load_data_report(ws, model_id, data.id)
    if rep is None:
        return []
    li = rep.labels
    out = []
    scale = display_scale(data.input_shape[1], 64)
    for j in range(min(n, len(li.indices))):
        idx = int(rep.label_subset[li.indices[j]])
        out.append({"index": idx, "given": data.classes[int(li.given[j])],
                    "suggested": data.classes[int(li.suggested[j])],
                    "self_confidence": float(li.self_confidence[j]),
                    "image": _png_uri(as_image(data.x_train[idx], scale))})
    return out


# --- HTML ---------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2330;line-height:1.45}h1{font-size:1.8rem;margin-bottom:.2rem}h2{border-bottom:2px solid #e3e6ef;
padding-bottom:.2rem;margin-top:2.2rem}table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d8dce6;padding:.25rem .55rem;text-align:right}th{background:#f3f5fa}
td:first-child,th:first-child{text-align:left}.muted{color:#667085;font-size:.88rem}.grid{display:flex;flex-wrap:wrap;
gap:.8rem}.card{border:1px solid #d8dce6;border-radius:6px;padding:.5rem;font-size:.82rem;width:220px}
.card img{image-rendering:pixelated;max-width:100%}.ok{color:#157f3b}.bad{color:#b42318}.neutral{color:#667085}
.verdict{font-weight:600}img.fig{max-width:100%}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _table(rows: list[dict], fmt: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> str:
    """An HTML table of ``rows`` (keys are the columns, shown as ``headers[key]`` where given); numbers in ``fmt``'s
    format, with the current language's decimal separator."""
    if not rows:
        return "<p class='muted'>" + _e(_("(none)")) + "</p>"
    fmt, headers = fmt or {}, headers or {}
    cols = list(rows[0])
    head = "".join(f"<th>{_e(headers.get(c, c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(num(r[c], fmt[c]) if c in fmt and isinstance(r[c], (int, float)) else r[c])}</td>"
                                    for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _lat(rec: Record, batch: int = 1) -> str:
    lat = rec.latency.get(str(batch))
    if not lat:
        return _("n/a")
    return _("{ms} ms ({runtime}, {threads} threads)").format(
        ms=num(float(lat["median_ms"]), ".2f"), runtime=lat.get("runtime", ""), threads=lat.get("threads", "?"))


def _speedups(v: Record, base: Record) -> dict[str, str]:
    """Both speed-ups of a variant at batch 1 as text: against the base in its runtime (one run) and against the
    base's fastest fp32 runtime; "n/a" where not measured by today's harness."""
    sp = speedups(v, base if v.parent == base.id else None, 1)
    same = (_("{x}× (base in {runtime})").format(x=num(sp["same_runtime"], ".2f"), runtime=sp["same_runtime_base"])
            if math.isfinite(sp["same_runtime"]) else _("n/a"))
    fast = (f"{num(sp['vs_fastest_fp32'], '.2f')}× ({sp['fastest_fp32_runtime']})"
            if math.isfinite(sp["vs_fastest_fp32"]) else _("n/a"))
    return {"speed-up, same runtime": same, "speed-up vs base's fastest fp32": fast}


def _h2(section: str) -> str:
    return f"<h2>{_e(_(HEADINGS[section]))}</h2>"


def render_html(r: ReportData, lang: str | None = None) -> str:
    """The report as one HTML document (no script, no external resource), in ``lang`` (default: the language the
    data was gathered in)."""
    with i18n.language(lang or r.lang) as code:
        return _render_html(r, code)


def _render_html(r: ReportData, code: str) -> str:
    rec, data = r.record, r.data
    pre = data.preprocessing
    title = _("nnlab report: {name}").format(name=rec.name)
    generated = _("Generated {time} by nnlab · model {model} · dataset {dataset}").format(
        time=_e(time.strftime("%Y-%m-%d %H:%M")), model=f"<code>{_e(rec.id)}</code>",
        dataset=f"<code>{_e(data.id)}</code>")
    parts = [f"<!doctype html><html lang='{code}'><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1><p class='muted'>{generated}</p>"]
    # model card
    size = (_("{kib} KiB").format(kib=num(rec.size_bytes / 1024, ".0f")) if rec.size_bytes else _("in memory"))
    card = [{"": _("Architecture"), "value": rec.arch}, {"": _("Dataset"), "value": f"{data.name} — {data.source}"},
            {"": _("Classes"), "value": f"{data.num_classes}: {', '.join(data.classes[:20])}"
                                        + (" …" if data.num_classes > 20 else "")},
            {"": _("Images"), "value": _("{train} training, {test} test").format(
                train=num(len(data.y_train), ",d"), test=num(len(data.y_test), ",d"))},
            {"": _("Preprocessing"), "value": pre.describe() + (f" ({pre.source})" if pre.source else "")},
            {"": _("Test accuracy"), "value": num(r.test.accuracy, ".2%")},
            {"": _("Train accuracy"), "value": num(r.train.accuracy, ".2%")},
            {"": _("Parameters"), "value": _("{params} ({nonzero} nonzero)").format(
                params=num(rec.params, ",d"), nonzero=num(rec.nonzero_params, ",d"))},
            {"": _("MACs / image"), "value": _("{macs} M").format(macs=num(rec.macs / 1e6, ".2f"))},
            {"": _("Size on disk"), "value": size},
            {"": _("Latency, batch 1"), "value": _lat(rec, 1)}]
    value = _("value")
    parts.append(f"<section id='model-card'>{_h2('model-card')}{_table(card, headers={'value': value})}</section>")
    # diagnosis
    d = r.diagnosis
    if r.lang != code:  # the diagnosis' words in this language: the same rules on the same numbers
        from diagnostics.diagnosis import Facts

        d = diagnose(d.e_train, d.e_test, d.e_goal, r.facts or Facts(), n_test=len(r.test.labels))
    acts = "".join(f"<li><span class='verdict {('ok' if a.verdict == 'supported' else 'bad' if a.verdict == 'contradicted' else 'neutral')}'>"
                   f"{_e(verdict_label(a.verdict))}</span> — <b>{_e(a.text)}</b><br><span class='muted'>{_e(a.evidence)}</span></li>"
                   for a in d.actions)
    parts.append(f"<section id='diagnosis'>{_h2('diagnosis')}"
                 + _table([{"E_train": num(r.train.error, ".2%"), "E_test": num(r.test.error, ".2%"),
                            "E_goal": num(r.e_goal, ".2%"), "E_test − E_goal": num(r.test.error - r.e_goal, "+.2%")}])
                 + f"<p><b>{_e(regime_label(d.regime))}</b>: {_e(d.headline)}</p>"
                 + "".join(f"<p class='muted'>{_e(n)}</p>" for n in d.notes)
                 + (f"<ol>{acts}</ol>" if acts else "") + "</section>")
    # per-class
    rows = r.metrics.rows(data.classes)
    parts.append(f"<section id='per-class'>{_h2('per-class')}"
                 + _table(rows, {"precision": ".3f", "recall": ".3f", "f1": ".3f"},
                          {k: _(v) for k, v in METRIC_COLUMNS.items()})
                 + ("<img class='fig' alt='" + _e(_("confusion matrix")) + f"' src='{r.figures['confusion']}'>"
                    if r.figures.get("confusion") else "") + "</section>")
    # worst errors
    cards = "".join(f"<div class='card'><img alt='sample {w['index']}' src='{w['image']}'>"
                    + (f"<img alt='attribution' src='{w['attribution']}'>" if w["attribution"] else "")
                    + "<div>" + _("test #{index}: true {true} · predicted {pred} ({confidence}), loss {loss}").format(
                        index=w["index"], true=f"<b>{_e(w['true'])}</b>", pred=f"<b>{_e(w['pred'])}</b>",
                        confidence=num(w["confidence"], ".0%"), loss=num(w["loss"], ".2f")) + "</div></div>"
                    for w in r.worst)
    no_error = "<p>" + _e(_("No error on the test split.")) + "</p>"
    parts.append(f"<section id='worst-errors'>{_h2('worst-errors')}"
                 "<p class='muted'>" + _e(_("Test images the model gets wrong with the highest loss; beside each, "
                                           "where the attribution (integrated gradients for the predicted class) "
                                           "puts the evidence.")) + "</p>"
                 f"<div class='grid'>{cards or no_error}</div></section>")
    # data checks
    s = r.data_summary
    if s:
        nan = float("nan")
        dc = [{"check": _("Suspected label errors"), "result": _("{n} of {checked} ({fraction})").format(
                  n=num(s.get("label_issues", 0), ",d"), checked=num(s.get("label_checked", 0), ",d"),
                  fraction=num(s.get("label_issue_fraction", 0), ".2%"))},
              {"check": _("Class imbalance (largest / smallest)"), "result": num(s.get("imbalance_ratio", nan), ".2f")},
              {"check": _("Class-frequency shift train→test (TV)"), "result": num(s.get("class_shift", nan), ".3f")},
              {"check": _("Domain-classifier AUC (train vs test)"), "result": num(s.get("domain_auc", nan), ".3f")},
              {"check": _("Test images with a near-duplicate in train"), "result": num(s.get("duplicates", 0), ",d")}]
        issues = "".join(f"<div class='card'><img alt='train {li['index']}' src='{li['image']}'><div>"
                         + _("train #{index}: given {given}, suggested {suggested} (p(given) {p})").format(
                             index=li["index"], given=f"<b>{_e(li['given'])}</b>",
                             suggested=f"<b>{_e(li['suggested'])}</b>", p=num(li["self_confidence"], ".2f"))
                         + "</div></div>" for li in r.label_issues)
        from diagnostics.datacheck import shown_label_method

        method = shown_label_method(s.get("label_checked", 0), s.get("label_method", ""), len(data.y_train))
        parts.append(f"<section id='data-checks'>{_h2('data-checks')}"
                     + _table(dc, headers={"check": _("check"), "result": _("result")})
                     + f"<p class='muted'>{_e(method)}</p><div class='grid'>{issues}</div></section>")
    else:
        parts.append(f"<section id='data-checks'>{_h2('data-checks')}<p class='muted'>"
                     + _e(_("Not run for this model yet (Data checks page).")) + "</p></section>")
    # variants
    if r.variants:
        base = r.record
        cols = {"model": _("model"), "method": _("method"), "accuracy": _("accuracy"), "Δ points": _("Δ points"),
                "size (KiB)": _("size (KiB)"), "latency b1": _("latency b1"),
                "speed-up, same runtime": _("speed-up, same runtime"),
                "speed-up vs base's fastest fp32": _("speed-up vs base's fastest fp32"), "MACs (M)": _("MACs (M)"),
                "runtime": _("runtime")}
        one = num(1.0, ".2f") + "×"
        side = [{"model": _("{name} (base)").format(name=base.name), "method": _("base"),
                 "accuracy": num(base.accuracy, ".2%"), "Δ points": "",
                 "size (KiB)": num(base.size_bytes / 1024, ".1f"), "latency b1": _lat(base),
                 "speed-up, same runtime": one, "speed-up vs base's fastest fp32": one,
                 "MACs (M)": num(base.macs / 1e6, ".2f"), "runtime": str(base.latency.get("1", {}).get("runtime", ""))}]
        for v in r.variants:
            side.append({"model": v.name, "method": v.method, "accuracy": num(v.accuracy, ".2%"),
                         "Δ points": num(100 * (v.accuracy - base.accuracy), "+.2f"),
                         "size (KiB)": num(v.size_bytes / 1024, ".1f"), "latency b1": _lat(v),
                         **_speedups(v, base), "MACs (M)": num(v.macs / 1e6, ".2f"),
                         "runtime": str(v.extra.get("runtime", ""))})
        deltas = []
        for i, c in enumerate(data.classes):
            row = {"class": c, "base": num(base.per_class_accuracy[i], ".2%") if i < len(base.per_class_accuracy)
                   else ""}
            for v in r.variants:
                if i < len(v.per_class_accuracy) and i < len(base.per_class_accuracy):
                    row[v.name[:40]] = num(100 * (v.per_class_accuracy[i] - base.per_class_accuracy[i]), "+.2f")
            deltas.append(row)
        parts.append(f"<section id='variants'>{_h2('variants')}"
                     + ("<img class='fig' alt='" + _e(_("Pareto plot")) + f"' src='{r.figures['pareto']}'>"
                        if r.figures.get("pareto") else "")
                     + "<h3>" + _e(_("Side by side")) + "</h3>" + _table(side, headers=cols)
                     + "<h3>" + _e(_("Per-class accuracy change (points)")) + "</h3>"
                     + _table(deltas, headers={"class": _("class"), "base": _("base")}) + "</section>")
    else:
        parts.append(f"<section id='variants'>{_h2('variants')}<p class='muted'>" + _e(_("No variant chosen."))
                     + "</p></section>")
    if r.notes:
        parts.append(f"<section>{_h2('notes')}" + "".join(f"<p class='muted'>{_e(n)}</p>" for n in r.notes)
                     + "</section>")
    parts.append("</body></html>")
    return "".join(parts)


def to_pdf(html_path: Path, pdf_path: Path, timeout: float = 120) -> bool:
    """Print the HTML to PDF with the system's headless Chromium; False when no browser can do it."""
    import subprocess

    from nnlab.figures import browser_path

    browser = browser_path()
    if not browser:
        return False
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", "--no-pdf-header-footer"]
    try:
        subprocess.run([browser, *flags, f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return False
    return pdf_path.is_file() and pdf_path.stat().st_size > 0


__all__ = ["SECTIONS", "ReportData", "gather", "render_html", "to_pdf"]
