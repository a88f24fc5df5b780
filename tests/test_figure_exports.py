"""Every page's figures download as PNG and SVG: one figure of every page, taken from the page's own chart
element (AppTest), exported by kaleido with Debian's chromium in a process without network access; PNGs have the
expected size and are not blank, SVGs parse as SVG. Plus the export's own rules: no browser download, MathJax
off, the project's chromium flags, safe from several threads at once."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

import compression.tasks  # noqa: F401
from compression import sensitivity
from compression.registry import config_from_dict
from compression.variant import make_variant
from nnlab import figures
from nnlab.workspace import Workspace
from tests.browser import CHROMIUM, require_chromium
from tests.conftest import app_test

ROOT = Path(__file__).resolve().parents[1]
# page → the key of the chart of it that is exported (a prefix for charts drawn per sample)
PAGE_FIGURES = {
    "pages/overview.py": "overview_history",
    "pages/train.py": "train_history",
    "pages/diagnose_classes.py": "classes_cm",
    "pages/diagnose_worst.py": "worst_top5_test_",
    "pages/diagnose_data.py": "data_balance",
    "pages/diagnose_curves.py": "curves_hist_loss",
    "pages/inside_filters.py": "filters_norms",
    "pages/inside_activations.py": "acts_hist",
    "pages/compress_lab.py": "lab_sens_fig",
    "pages/compress_pareto.py": "pareto_fig_size",
    "pages/compress_compare.py": "compare_per_class",
    "pages/compress_diagnose.py": "diag_depth",
}
SVG = "{http://www.w3.org/2000/svg}"


def _chart_key(element) -> str:
    return element.proto.id.split("-", 2)[2]  # "$$ID-<hash>-<key>"


def _figures_of(at) -> dict[str, dict]:
    return {_chart_key(el): json.loads(el.proto.spec) for el in at.get("plotly_chart")}


def _download_keys(at) -> set[str]:
    return {el.proto.id.split("-", 2)[2] for el in at.get("download_button")}


@pytest.fixture(scope="module")
def page_figures(demo, digits):
    """Run every page that draws figures; returns page → (chart key, figure JSON)."""
    model, base, _ = demo
    ws = Workspace()
    if not [v for v in ws.list_variants() if v.parent == base.id]:  # the Side-by-side page needs one variant
        make_variant(model, base.id, base.arch, [config_from_dict({"method": "prune-unstructured",
                                                                   "scope": "global"})], digits, ws)
    sens_key = compression.tasks.sensitivity_key(base.id, "prune", 500)  # the lab's sensitivity plot
    made_table = ws.load_run(sens_key) is None
    if made_table:
        rows = [{"layer": la, "level": lv, "accuracy": 0.9 - lv / 10, "drop": lv / 10, "params": 10}
                for la in ("features.0", "features.4") for lv in sensitivity.DEFAULT_LEVELS["prune"]]
        ws.save_run(sens_key, sensitivity.SensitivityTable("prune", 0.9, rows).to_dict())
    out = {}
    try:
        for page, chart in PAGE_FIGURES.items():
            at = app_test(page, timeout=300)
            if page.endswith("train.py"):
                at.session_state["train_epochs"] = 1
                at.run()
                at.button(key="train_run").click()
            at.run()
            assert not at.exception, (page, at.exception)
            figs = _figures_of(at)
            key = next((k for k in figs if k == chart or chart.endswith("_") and k.startswith(chart)), None)
            assert key is not None, f"{page}: no chart {chart!r}; has {sorted(figs)}"
            assert {f"{key}_png", f"{key}_svg"} <= _download_keys(at), f"{page}: no PNG/SVG buttons for {key}"
            out[page] = (key, figs[key])
    finally:
        if made_table:
            ws.run_path(sens_key).unlink(missing_ok=True)
    return out


def _offline(cmd: list[str]) -> tuple[list[str], bool]:
    """``cmd`` in a new network namespace (no interface but a downed loopback) when this system allows it."""
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    return (["unshare", "-rn", *cmd], True) if probe.returncode == 0 else (cmd, False)


EXPORT_SCRIPT = """
import json, sys
from pathlib import Path
from nnlab import figures
todo = json.loads(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2])
for name, fig in todo.items():
    (out / f"{name}.png").write_bytes(figures.to_png(fig))
    (out / f"{name}.svg").write_bytes(figures.to_svg(fig))
(out / "command.json").write_text(json.dumps(figures.browser_command()))
"""


@pytest.fixture(scope="module")
def exported(page_figures, tmp_path_factory):
    """PNG and SVG of each page's figure, rendered in a subprocess with no network."""
    require_chromium()
    folder = tmp_path_factory.mktemp("exports")
    todo = {Path(page).stem: fig for page, (_, fig) in page_figures.items()}
    (folder / "todo.json").write_text(json.dumps(todo))
    cmd, isolated = _offline([sys.executable, "-c", EXPORT_SCRIPT, str(folder / "todo.json"), str(folder)])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(folder),
                               "NNLAB_WORKSPACE": str(folder / "ws")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, isolated


def _expected_size(fig: dict) -> tuple[int, int]:
    layout = fig.get("layout") or {}
    return (layout.get("width") or figures.DEFAULT_WIDTH, layout.get("height") or figures.DEFAULT_HEIGHT)


@pytest.mark.parametrize("page", list(PAGE_FIGURES))
def test_page_figure_exports_as_png_and_svg(page, page_figures, exported):
    folder, _ = exported
    _, fig = page_figures[page]
    w, h = _expected_size(fig)
    png = (folder / f"{Path(page).stem}.png").read_bytes()
    assert figures.png_size(png) == (w * figures.PNG_SCALE, h * figures.PNG_SCALE)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 5, "blank image"
    background = np.median(pixels.reshape(-1, 3), axis=0)
    drawn = np.abs(pixels - background).sum(axis=2) > 30
    assert drawn.mean() > 0.005, f"only {drawn.mean():.2%} of the pixels differ from the background"
    svg = (folder / f"{Path(page).stem}.svg").read_bytes()
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and int(float(root.get("width"))) == w
    assert len(root.findall(f".//{SVG}path")) + len(root.findall(f".//{SVG}text")) > 3
    # Streamlit's placeholder colours (#000001 … #000040) were replaced by real ones
    assert not re.search(rb"rgb\(0, 0, (?:[1-9]|[1-3][0-9]|40)\)", svg)


def test_exports_ran_offline_in_debians_chromium_with_the_projects_flags(exported):
    folder, isolated = exported
    if not isolated:
        pytest.fail("this system cannot make a network namespace (unshare -rn): the offline run is not proven",
                    pytrace=False)
    command = json.loads((folder / "command.json").read_text())
    assert CHROMIUM in command
    for flag in ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--headless"):
        assert flag in command
    from choreographer.cli._cli_utils import get_chrome_download_path

    assert not get_chrome_download_path(mkdir=False).exists()  # nothing was ever downloaded
    page = figures.page_html()
    assert "http://" not in page and "https://" not in page and "mathjax" not in page.lower()


def test_no_page_draws_a_chart_without_its_downloads():
    """Every plotly chart goes through widgets.chart; pages without charts are known."""
    for page in sorted((ROOT / "pages").glob("*.py")):
        text = page.read_text()
        assert "st.plotly_chart(" not in text and ".plotly_chart(" not in text, page.name
        if f"pages/{page.name}" not in PAGE_FIGURES:
            assert "widgets.chart(" not in text, f"{page.name} draws a chart: add it to PAGE_FIGURES"


def test_exports_from_many_threads_at_once():
    require_chromium()
    fig = go.Figure(go.Bar(x=["a", "b", "c"], y=[1, 3, 2]), layout={"width": 300, "height": 200})
    results: dict[int, bytes] = {}
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = figures.to_image(fig, "png" if i % 2 else "svg")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    pngs = {results[i] for i in range(1, 8, 2)}
    # same figure, same pixels, whatever the interleaving (SVGs differ only by plotly's random figure id)
    svgs = {results[i].replace(re.search(rb'id="defs-([0-9a-f]+)"', results[i]).group(1), b"UID")
            for i in range(0, 8, 2)}
    assert len(pngs) == 1 and len(svgs) == 1
    assert figures.png_size(next(iter(pngs))) == (600, 400)


def test_export_errors_say_what_to_do(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    assert not figures.available()
    with pytest.raises(figures.FigureExportError, match="BROWSER_PATH.*apt-get install chromium"):
        figures.to_png(go.Figure())
    from compression import export

    with pytest.raises(export.ExportError, match="BROWSER_PATH"):
        export.figure_png(go.Figure())
