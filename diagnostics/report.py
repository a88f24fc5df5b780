"""One report per model: a single self-contained HTML file (and a PDF when a browser can print it).

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
from diagnostics.diagnosis import default_goal, diagnose
from diagnostics.errors import class_metrics, confusion, confusion_figure, rank_samples
from nnlab.data.sets import ImageDataset
from nnlab.data.viz import as_image, display_scale
from nnlab.evaluate import EvalResult
from nnlab.measure import speedups
from nnlab.records import Record
from nnlab.workspace import Workspace

SECTIONS = ("model-card", "diagnosis", "per-class", "worst-errors", "data-checks", "variants")


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
        notes.append(f"A figure could not be rendered ({type(exc).__name__}: {str(exc)[:160]}).")
        return ""
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()


def gather(model: nn.Module, record: Record, data: ImageDataset, ws: Workspace, test: EvalResult,
           train: EvalResult, variants: list[Record] | None = None, e_goal: float | None = None,
           worst: int = 8, attribution: str = "integrated_gradients", history: list[dict] | None = None,
           progress: Any = None) -> ReportData:
    """Collect every section's numbers and pictures (the model is only read: attributions use a copy)."""
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
                     cm=cm, data_summary=summary, variants=list(variants or []), notes=notes)
    if progress is not None:
        progress("figures: confusion matrix", 0.2)
    rep.figures["confusion"] = _figure_uri(confusion_figure(cm, data.classes), notes, 700, 600)
    if progress is not None:
        progress("worst errors and their attributions", 0.35)
    rep.worst = _worst(model, data, test, worst, attribution, notes)
    rep.label_issues = _label_issues(ws, record.id, data)
    if rep.variants:
        if progress is not None:
            progress("figures: Pareto plot", 0.8)
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
            if not notes or "attributions" not in notes[-1]:
                notes.append(f"No {method} attributions for this model ({type(exc).__name__}: {str(exc)[:120]}).")
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


def _table(rows: list[dict], fmt: dict[str, str] | None = None) -> str:
    if not rows:
        return "<p class='muted'>(none)</p>"
    fmt = fmt or {}
    cols = list(rows[0])
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(format(r[c], fmt[c]) if c in fmt and isinstance(r[c], (int, float)) else r[c])}</td>"
                                    for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _lat(rec: Record, batch: int = 1) -> str:
    lat = rec.latency.get(str(batch))
    if not lat:
        return "n/a"
    return f"{float(lat['median_ms']):.2f} ms ({lat.get('runtime', '')}, {lat.get('threads', '?')} threads)"


def _speedups(v: Record, base: Record) -> dict[str, str]:
    """Both speed-ups of a variant at batch 1 as text: against the base in its runtime (one run) and against the
    base's fastest fp32 runtime; "n/a" where not measured by today's harness."""
    sp = speedups(v, base if v.parent == base.id else None, 1)
    same = (f"{sp['same_runtime']:.2f}× (base in {sp['same_runtime_base']})"
            if math.isfinite(sp["same_runtime"]) else "n/a")
    fast = (f"{sp['vs_fastest_fp32']:.2f}× ({sp['fastest_fp32_runtime']})"
            if math.isfinite(sp["vs_fastest_fp32"]) else "n/a")
    return {"speed-up, same runtime": same, "speed-up vs base's fastest fp32": fast}


def render_html(r: ReportData) -> str:
    """The report as one HTML document (no script, no external resource)."""
    rec, data = r.record, r.data
    pre = data.preprocessing
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>nnlab report: {_e(rec.name)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>nnlab report: {_e(rec.name)}</h1><p class='muted'>Generated {_e(time.strftime('%Y-%m-%d %H:%M'))}"
             f" by nnlab · model <code>{_e(rec.id)}</code> · dataset <code>{_e(data.id)}</code></p>"]
    # model card
    card = [{"": "Architecture", "value": rec.arch}, {"": "Dataset", "value": f"{data.name} — {data.source}"},
            {"": "Classes", "value": f"{data.num_classes}: {', '.join(data.classes[:20])}"
                                     + (" …" if data.num_classes > 20 else "")},
            {"": "Images", "value": f"{len(data.y_train):,} training, {len(data.y_test):,} test"},
            {"": "Preprocessing", "value": pre.describe() + (f" ({pre.source})" if pre.source else "")},
            {"": "Test accuracy", "value": f"{r.test.accuracy:.2%}"},
            {"": "Train accuracy", "value": f"{r.train.accuracy:.2%}"},
            {"": "Parameters", "value": f"{rec.params:,} ({rec.nonzero_params:,} nonzero)"},
            {"": "MACs / image", "value": f"{rec.macs / 1e6:.2f} M"},
            {"": "Size on disk", "value": f"{rec.size_bytes / 1024:.0f} KiB" if rec.size_bytes else "in memory"},
            {"": "Latency, batch 1", "value": _lat(rec, 1)}]
    parts.append(f"<section id='model-card'><h2>Model card</h2>{_table(card)}</section>")
    # diagnosis
    d = r.diagnosis
    acts = "".join(f"<li><span class='verdict {('ok' if a.verdict == 'supported' else 'bad' if a.verdict == 'contradicted' else 'neutral')}'>"
                   f"{_e(a.verdict)}</span> — <b>{_e(a.text)}</b><br><span class='muted'>{_e(a.evidence)}</span></li>"
                   for a in d.actions)
    parts.append("<section id='diagnosis'><h2>Diagnosis against the goal</h2>"
                 + _table([{"E_train": f"{r.train.error:.2%}", "E_test": f"{r.test.error:.2%}",
                            "E_goal": f"{r.e_goal:.2%}", "E_test − E_goal": f"{r.test.error - r.e_goal:+.2%}"}])
                 + f"<p><b>{_e(d.regime)}</b>: {_e(d.headline)}</p>"
                 + "".join(f"<p class='muted'>{_e(n)}</p>" for n in d.notes)
                 + (f"<ol>{acts}</ol>" if acts else "") + "</section>")
    # per-class
    rows = r.metrics.rows(data.classes)
    parts.append("<section id='per-class'><h2>Per-class metrics and confusion matrix</h2>"
                 + _table(rows, {"precision": ".3f", "recall": ".3f", "f1": ".3f"})
                 + (f"<img class='fig' alt='confusion matrix' src='{r.figures['confusion']}'>"
                    if r.figures.get("confusion") else "") + "</section>")
    # worst errors
    cards = "".join(f"<div class='card'><img alt='sample {w['index']}' src='{w['image']}'>"
                    + (f"<img alt='attribution' src='{w['attribution']}'>" if w["attribution"] else "")
                    + f"<div>test #{w['index']}: true <b>{_e(w['true'])}</b> · predicted <b>{_e(w['pred'])}</b> "
                      f"({w['confidence']:.0%}), loss {w['loss']:.2f}</div></div>" for w in r.worst)
    parts.append("<section id='worst-errors'><h2>Worst errors and their attributions</h2>"
                 "<p class='muted'>Test images the model gets wrong with the highest loss; beside each, where the "
                 "attribution (integrated gradients for the predicted class) puts the evidence.</p>"
                 f"<div class='grid'>{cards or '<p>No error on the test split.</p>'}</div></section>")
    # data checks
    s = r.data_summary
    if s:
        dc = [{"check": "Suspected label errors", "result": f"{s.get('label_issues', 0):,} of "
                                                            f"{s.get('label_checked', 0):,} ({s.get('label_issue_fraction', 0):.2%})"},
              {"check": "Class imbalance (largest / smallest)", "result": f"{s.get('imbalance_ratio', float('nan')):.2f}"},
              {"check": "Class-frequency shift train→test (TV)", "result": f"{s.get('class_shift', float('nan')):.3f}"},
              {"check": "Domain-classifier AUC (train vs test)", "result": f"{s.get('domain_auc', float('nan')):.3f}"},
              {"check": "Test images with a near-duplicate in train", "result": f"{s.get('duplicates', 0):,}"}]
        issues = "".join(f"<div class='card'><img alt='train {li['index']}' src='{li['image']}'><div>train "
                         f"#{li['index']}: given <b>{_e(li['given'])}</b>, suggested <b>{_e(li['suggested'])}</b> "
                         f"(p(given) {li['self_confidence']:.2f})</div></div>" for li in r.label_issues)
        parts.append(f"<section id='data-checks'><h2>Data checks</h2>{_table(dc)}"
                     f"<p class='muted'>{_e(s.get('label_method', ''))}</p><div class='grid'>{issues}</div></section>")
    else:
        parts.append("<section id='data-checks'><h2>Data checks</h2><p class='muted'>Not run for this model yet "
                     "(Data checks page).</p></section>")
    # variants
    if r.variants:
        base = r.record
        side = [{"model": base.name + " (base)", "method": "base", "accuracy": f"{base.accuracy:.2%}", "Δ points": "",
                 "size (KiB)": f"{base.size_bytes / 1024:.1f}", "latency b1": _lat(base),
                 "speed-up, same runtime": "1.00×", "speed-up vs base's fastest fp32": "1.00×",
                 "MACs (M)": f"{base.macs / 1e6:.2f}", "runtime": str(base.latency.get("1", {}).get("runtime", ""))}]
        for v in r.variants:
            side.append({"model": v.name, "method": v.method, "accuracy": f"{v.accuracy:.2%}",
                         "Δ points": f"{100 * (v.accuracy - base.accuracy):+.2f}",
                         "size (KiB)": f"{v.size_bytes / 1024:.1f}", "latency b1": _lat(v),
                         **_speedups(v, base), "MACs (M)": f"{v.macs / 1e6:.2f}",
                         "runtime": str(v.extra.get("runtime", ""))})
        deltas = []
        for i, c in enumerate(data.classes):
            row = {"class": c, "base": f"{base.per_class_accuracy[i]:.2%}" if i < len(base.per_class_accuracy) else ""}
            for v in r.variants:
                if i < len(v.per_class_accuracy) and i < len(base.per_class_accuracy):
                    row[v.name[:40]] = f"{100 * (v.per_class_accuracy[i] - base.per_class_accuracy[i]):+.2f}"
            deltas.append(row)
        parts.append("<section id='variants'><h2>Compressed variants</h2>"
                     + (f"<img class='fig' alt='Pareto plot' src='{r.figures['pareto']}'>" if r.figures.get("pareto") else "")
                     + "<h3>Side by side</h3>" + _table(side)
                     + "<h3>Per-class accuracy change (points)</h3>" + _table(deltas) + "</section>")
    else:
        parts.append("<section id='variants'><h2>Compressed variants</h2><p class='muted'>No variant chosen.</p>"
                     "</section>")
    if r.notes:
        parts.append("<section><h2>Notes</h2>" + "".join(f"<p class='muted'>{_e(n)}</p>" for n in r.notes)
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
