"""The one-file report: every section, the same numbers the pages show, no external resource, a PDF beside it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from nnlab.jobs import refs
from nnlab.workspace import Workspace


@pytest.fixture(scope="module")
def report(demo, digits):
    import diagnostics.tasks as dtasks
    from compression.registry import config_from_dict
    from compression.variant import make_variant

    model, base, _ = demo
    ws = Workspace()
    variants = [make_variant(model, base.id, base.arch, [config_from_dict(c)], digits, ws, latency_repeats=3)
                for c in ({"method": "prune-unstructured", "sparsity": 0.5},
                          {"method": "quantize-weights", "bits": 4})]
    res = dtasks.build_report(ws, base.id, refs.data_ref("digits"), [v.id for v in variants], 0.01)
    html = (ws.root / res["html"]).read_text()
    return html, res, variants, base


def test_every_section_is_there_with_the_pages_numbers(report, demo, digits):
    from diagnostics.errors import class_metrics
    from diagnostics.report import SECTIONS
    from nnlab.evaluate import evaluate

    html, res, variants, base = report
    for sid in SECTIONS:
        assert f"id='{sid}'" in html, sid
    test = evaluate(demo[0], digits, "test")
    train = evaluate(demo[0], digits, "train")
    assert f"{test.accuracy:.2%}" in html  # the Overview's "Test accuracy"
    assert f"{train.error:.2%}" in html and f"{test.error:.2%}" in html and "1.00%" in html  # E_train, E_test, E_goal
    m = class_metrics(test.labels, test.preds, digits.num_classes)
    for i in (0, 5, 9):
        assert f"<td>{m.precision[i]:.3f}</td><td>{m.recall[i]:.3f}</td><td>{m.f1[i]:.3f}</td>" in html
    assert f"{base.params:,}" in html and f"{base.macs / 1e6:.2f} M" in html
    for v in variants:  # side by side: accuracy, change and size as the Side-by-side page shows them
        assert v.name in html or v.name[:40] in html
        assert f"{v.accuracy:.2%}" in html and f"{100 * (v.accuracy - base.accuracy):+.2f}" in html
        assert f"{v.size_bytes / 1024:.1f}" in html
    assert digits.preprocessing.describe() in html
    n_wrong = int((test.preds != test.labels).sum())
    assert html.count("class='card'><img alt='sample") == min(8, n_wrong)
    assert "data:image/svg+xml;base64," in html  # the confusion matrix and the Pareto plot are embedded


def test_the_report_opens_offline(report):
    html = report[0]
    assert not re.search(r"https?://", html), re.search(r".{60}https?://.{60}", html)
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:|#)""", html)
    assert "<script" not in html.lower() and "@import" not in html


def test_pdf_beside_it_and_figures_in_the_numbers(report):
    _, res, _, _ = report
    ws = Workspace()
    assert res["bytes"] > 20_000 and res["seconds"] > 0
    assert res["pdf"], "Debian's chromium is installed by make test: the PDF must be printed"
    pdf = (ws.root / res["pdf"]).read_bytes()
    assert pdf[:5] == b"%PDF-" and len(pdf) > 10_000


def test_cli_writes_the_same_report(report, tmp_path, demo):
    from diagnostics.cli import main

    _, _, variants, base = report
    out = tmp_path / "r.html"
    assert main(["report", "--model", base.id, "--variants", ",".join(v.id for v in variants), "--goal", "0.01",
                 "--out", str(out), "--quiet"]) == 0
    text = out.read_text()
    assert all(f"id='{s}'" in text for s in ("model-card", "variants"))
    assert np.isclose(len(text), len(report[0]), rtol=0.05)
