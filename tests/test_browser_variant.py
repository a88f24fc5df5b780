"""Diagnose a variant in headless chromium (issue 21): an int8 ONNX Runtime variant of the demo model, made
beforehand through the compression API; the page shows its per-layer error and the put-one-layer-back ranking,
the repair makes a new variant, and the Pareto plot carries it with the layers it put back in its hover text.

``NNLAB_SCREENSHOTS=1`` also writes the Diagnose-a-variant page to docs/variant-diagnosis.png (the README shows it).
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from compression.int8 import Int8Config
from compression.variant import make_variant
from diagnostics.tasks import variant_diagnosis_key
from nnlab.workspace import Workspace
from tests.browser import SETTLED, browser_page, choose, no_exception
from tests.conftest import ROOT

SCREENSHOT = "variant-diagnosis.png"
# every Plotly figure on the page: per marker, its record id (customdata[0]) and hover text
PLOTTED = """() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(gd => (gd.data || []).flatMap(t =>
  (t.customdata || []).map((c, i) => [String(c[0]), String((t.hovertext || [])[i] || '')])))"""


@pytest.mark.slow
def test_diagnose_an_int8_variant_repair_it_and_see_it_on_the_pareto_plot(demo, digits, shared_server, tmp_path):
    model, base, _ = demo
    ws = Workspace()
    v = make_variant(model, base.id, base.arch, [Int8Config(backend="onnxruntime")], digits, ws,
                     name=f"int8 ORT browser {time.time_ns()}")
    with browser_page() as page:
        page.set_viewport_size({"width": 1400, "height": 1600})
        page.goto(f"{shared_server}/compress_diagnose")
        page.get_by_text("nnlab · Diagnose a variant").first.wait_for()
        choose(page, page.locator(".st-key-diag_variant"), page.get_by_role("option", name=re.compile(re.escape(v.id))))
        # the per-layer error and the ranking (put one layer back) of this variant
        page.get_by_text(re.compile("^Measured from ")).first.wait_for(timeout=300_000)
        page.get_by_text("Put one layer back").first.wait_for()
        page.get_by_text(re.compile("with only that layer left in float")).first.wait_for()
        page.locator('[data-testid="stDataFrame"]').nth(1).wait_for()  # the errors, then the ranking
        no_exception(page)
        run = ws.load_run(variant_diagnosis_key(base.id, v.id, digits.id, 256))
        assert run and run["recovery"] and all(len(r["layers"]) == 1 for r in run["recovery"])
        assert [r["accuracy"] for r in run["recovery"]] == sorted((r["accuracy"] for r in run["recovery"]), reverse=True)
        before = {r.id for r in ws.list_variants()}
        page.locator(".st-key-diag_repair button").click()
        page.get_by_text(re.compile(r"^New variant ")).first.wait_for(timeout=300_000)
        no_exception(page)
        new = [r for r in Workspace().list_variants() if r.id not in before]
        assert len(new) == 1, [r.id for r in new]
        rep = new[0]
        layers = rep.extra["restored_layers"]
        assert rep.extra["from_variant"] == v.id and rep.config["method"] == "restore" and isinstance(layers, list)
        assert rep.artifact_format == v.artifact_format and rep.parent == base.id
        page.get_by_text(re.compile(rf"New variant {re.escape(rep.id)}: {len(layers)} layer")).first.wait_for()
        page.wait_for_function(SETTLED)
        page.set_viewport_size({"width": 1400, "height": 3400})  # the whole page: Streamlit scrolls inside its main
        page.evaluate("() => document.querySelectorAll('*').forEach(e => { if (e.scrollTop) e.scrollTop = 0; })")
        page.wait_for_timeout(500)  # Plotly redraws at the new size
        shot = tmp_path / SCREENSHOT
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        if os.environ.get("NNLAB_SCREENSHOTS") == "1":
            shutil.copy(shot, ROOT / "docs" / SCREENSHOT)

        page.set_viewport_size({"width": 1400, "height": 1600})
        page.get_by_role("link", name="See it on the Pareto plot").click()
        page.get_by_text("Accuracy vs size").first.wait_for()
        page.locator(".js-plotly-plot").first.wait_for()
        page.wait_for_function(f"() => ({PLOTTED})().some(p => p[0] === {rep.id!r})", timeout=60_000)
        hover = dict(page.evaluate(PLOTTED))[rep.id]
        assert f"layers put back: {', '.join(layers) or '—'}" in hover, hover
        assert v.id in dict(page.evaluate(PLOTTED))  # the int8 variant it repairs is on the plot too
        no_exception(page)
