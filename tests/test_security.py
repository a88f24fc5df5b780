"""Security defaults and the read-only workspace: checked, not assumed."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import ROOT, app_test

SOURCES = [p for d in ("nnlab", "diagnostics", "compression", "pages") for p in (ROOT / d).rglob("*.py")] + [
    ROOT / "app.py"]


def test_server_defaults():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["server"]["enableXsrfProtection"] is True
    assert 0 < cfg["server"]["maxUploadSize"] <= 500
    assert cfg["browser"]["gatherUsageStats"] is False
    assert f"{cfg['server']['maxUploadSize']} MB" in (ROOT / "README.md").read_text()
    make = (ROOT / "Makefile").read_text()
    assert "HOST   ?= 127.0.0.1" in make and "--server.address $(HOST)" in make


def test_no_user_input_reaches_code_execution():
    banned = [r"(?<![.\w])eval\(", r"(?<![.\w])exec\(", r"os\.system\(", r"shell\s*=\s*True", r"pickle\.loads?\(",
              r"torch\.load\((?!.*weights_only=True)", r"yaml\.load\((?!.*SafeLoader)", r"subprocess\."]
    # two modules start processes, each with a fixed argument list (our own worker module; the headless
    # browser printing our own report file); no other module may
    fixed_argv = {"nnlab/data/_cachebuild.py": r"subprocess\.Popen\(\[sys\.executable, \"-m\", \"nnlab\.data\._cacheworker\"\]",
                  "diagnostics/report.py": r"subprocess\.run\(\[browser, \*flags, f\"--print-to-pdf=\{pdf_path\}\""}
    offenders = []
    for path in SOURCES:
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        if rel in fixed_argv:
            assert re.search(fixed_argv[rel], text), f"{rel} no longer starts its process with the fixed arguments"
            calls = re.findall(r"subprocess\.(?:Popen|run|call|check_output|check_call)\(", text)
            assert len(calls) == 1, (rel, calls)
            text = re.sub(r"subprocess\.", "", text)
        for pat in banned:
            for m in re.finditer(pat, text):
                offenders.append(f"{rel}: {m.group(0)}")
    assert not offenders, offenders
    assert len(SOURCES) > 20  # the scan really covers the code base


def test_read_only_workspace_keeps_app_running(demo, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("NNLAB_WORKSPACE", str(blocker / "ws"))
    at = app_test("pages/overview.py")
    at.run()
    assert not at.exception, at.exception
    assert any("not writable" in w.value for w in at.warning)
    at.button(key="train_demo").click().run()  # the demo model is offered, trained when asked (issue 22)
    assert not at.exception, at.exception
    assert any("not writable" in w.value for w in at.warning)
    assert any(m.label == "Test accuracy" for m in at.metric)  # trained in memory, shown anyway
