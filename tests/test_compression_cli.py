"""The command line: --help lists methods and parameters; apply prints a record; sweep writes one per variant."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compression  # noqa: F401
from compression.cli import main, stdout_to_stderr
from compression.registry import list_methods
from nnlab.records import Record
from nnlab.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_method_and_its_parameters():
    out = subprocess.run([sys.executable, "-m", "compression", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    for cls in list_methods():
        assert cls.method in out.stdout
        for fi in cls.fields_info():
            assert f"{fi.name}=" in out.stdout, (cls.method, fi.name)


@pytest.fixture()
def state_file(demo, tmp_path) -> Path:
    path = tmp_path / "demo.pt"
    torch.save(demo[0].state_dict(), path)
    return path


def test_apply_prints_the_record_json(state_file, tmp_path, capsys):
    ws = tmp_path / "ws"
    rc = main(["apply", "--model", str(state_file), "--arch", "demo-cnn", "--dataset", "digits", "--workspace",
               str(ws), "--method", "prune-unstructured", "--set", "sparsity=0.5", "--repeats", "3", "--quiet"])
    assert rc == 0
    rec = Record.from_json(capsys.readouterr().out)
    assert rec.method == "prune-unstructured" and rec.config["sparsity"] == 0.5 and rec.parent == "demo"
    assert rec.accuracy > 0.9 and 0.45 < rec.sparsity < 0.5
    assert Workspace(ws).load_variant(rec.id).to_dict() == rec.to_dict()


def test_apply_a_pipeline(state_file, tmp_path, capsys):
    rc = main(["apply", "--model", str(state_file), "--dataset", "digits", "--workspace", str(tmp_path / "ws"),
               "--method", "prune-unstructured", "--set", "sparsity=0.8", "scope=global",
               "--method", "cluster", "--set", "k=4", "--repeats", "3", "--quiet"])
    assert rc == 0
    rec = Record.from_json(capsys.readouterr().out)
    assert rec.method == "prune-unstructured+cluster"
    assert [s["method"] for s in rec.config["steps"]] == ["prune-unstructured", "cluster"]
    assert rec.config["steps"][0]["scope"] == "global" and rec.config["steps"][1]["k"] == 4
    assert rec.artifact_format == "nnlab-packed"


def test_sweep_writes_one_record_per_variant(state_file, tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"""
model: {state_file}
arch: demo-cnn
dataset: digits
variants:
  - {{method: prune-unstructured, sparsity: 0.3}}
  - name: pruned and clustered
    steps:
      - {{method: prune-unstructured, sparsity: 0.5}}
      - {{method: cluster, k: 8}}
  - [{{method: cluster, k: 2}}]
""")
    ws = tmp_path / "ws"
    rc = main(["sweep", str(sweep), "--workspace", str(ws), "--repeats", "3", "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    stored = Workspace(ws).list_variants()
    assert len(printed) == len(stored) == 3
    assert sorted(r.method for r in stored) == ["cluster", "prune-unstructured", "prune-unstructured+cluster"]
    assert any(r.name == "pruned and clustered" for r in stored)


@pytest.mark.parametrize("args, message", [
    (["--method", "prune-unstructured", "--set", "sparsity=2"], "sparsity must be between"),
    (["--method", "no-such-method"], "unknown method"),
    (["--method", "cluster", "--set", "k"], "key=value"),
])
def test_bad_input_gives_a_message_not_a_traceback(args, message, state_file, tmp_path, capsys):
    rc = main(["apply", "--model", str(state_file), "--dataset", "digits", "--workspace", str(tmp_path / "ws"),
               "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert Workspace(tmp_path / "ws").list_variants() == []


def test_bad_sweep_file_is_refused_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"variants": [{"method": "cluster", "k": 999}]}))
    assert main(["sweep", str(bad), "--workspace", str(tmp_path / "ws"), "--quiet"]) == 2
    assert "k must be between" in capsys.readouterr().err


def test_a_rerun_sweep_reuses_its_records(state_file, tmp_path, capsys):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"model": str(state_file), "dataset": "digits",
                                 "variants": [{"method": "quantize-weights", "bits": 4}, {"method": "cluster", "k": 4}]}))
    ws = tmp_path / "ws"
    args = ["sweep", str(sweep), "--workspace", str(ws), "--repeats", "2", "--quiet"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second == first  # same ids, same records (created time included): nothing measured twice
    sid = first[0]["id"].rsplit("-", 1)[0]
    assert [r["id"] for r in first] == [f"{sid}-000", f"{sid}-001"]
    assert all(r["extra"]["threads"] == 1 and r["extra"]["executor"] == "in-process" for r in first)
    assert len(Workspace(ws).list_variants()) == 2


def test_search_subcommand_prints_the_frontier(demo, tmp_path, capsys):
    model, base, _ = demo
    ws = Workspace(tmp_path / "ws")
    ws.save_model(base.id, model.state_dict())
    ws.save_model_record(base.id, base)
    cands = tmp_path / "c.json"
    cands.write_text(json.dumps([{"method": "quantize-weights", "bits": 8}, {"method": "cluster", "k": 2}]))
    rc = main(["search", "--model", base.id, "--dataset", "digits", "--workspace", str(ws.root), "--budget", "0.02",
               "--candidates", str(cands), "--repeats", "2", "--quiet"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["executor"]["kind"] == "in-process" and len(out["tried"]) == 2
    from compression.pareto import pareto_mask

    front = {r["id"] for r in out["frontier"]}
    within = [r for r in out["tried"] if r["drop"] <= 0.02 + 1e-12]
    ids = [base.id] + [r["record_id"] for r in within]
    mask = pareto_mask([base.accuracy] + [r["accuracy"] for r in within], [base.size_bytes] + [r["cost"] for r in within])
    assert front == {i for i, m in zip(ids, mask) if m}
    kept = {r.id for r in ws.list_variants()}
    assert kept == front - {base.id}


# --- stdout carries one JSON document; --dataset takes paths like the sidebar (issue 20) ----------------------

def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m compression ...`` in a fresh interpreter, from the repository root."""
    return subprocess.run([sys.executable, "-m", "compression", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, check=False)


def make_image_folder(root: Path, per_class: int = 12) -> Path:
    """A tiny ImageFolder of 8×8 greyscale PNGs: three classes, each a bright column band at its own place."""
    from PIL import Image

    g = np.random.default_rng(0)
    for c, name in enumerate(["left", "middle", "right"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            x = g.integers(0, 40, size=(8, 8))
            x[:, c * 3:c * 3 + 2] += 200
            Image.fromarray(x.clip(0, 255).astype(np.uint8), mode="L").save(root / name / f"{i:02d}.png")
    return root


def test_stdout_to_stderr_moves_python_fd_and_c_writes(capfd):
    with stdout_to_stderr():
        print("python-level")
        os.write(1, b"fd-level\n")
        ctypes.CDLL(None).puts(b"c-level")  # buffered by C stdio: must be flushed before fd 1 comes back
    print("after")
    out, err = capfd.readouterr()
    assert out == "after\n"
    assert "python-level" in err and "fd-level" in err and "c-level" in err


@pytest.mark.slow
def test_quiet_int8_apply_prints_exactly_one_json_document(demo, tmp_path):
    model, base, _ = demo
    ws = Workspace(tmp_path / "ws")  # the suite's demo, so the subprocess does not train it again
    ws.save_model(base.id, model.state_dict())
    ws.save_model_record(base.id, base)
    res = run_cli("apply", "--model", "demo", "--dataset", "digits", "--method", "int8", "--workspace", str(ws.root),
                  "--repeats", "3", "--quiet")
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout)  # the whole stdout: NNCF's progress bars or anything else would break this
    assert rec["method"] == "int8" and rec["parent"] == base.id and rec["accuracy"] > 0.9
    assert ws.load_variant(rec["id"]).to_dict() == Record.from_dict(rec).to_dict()


@pytest.mark.slow
def test_dataset_may_be_an_image_folder_under_the_allowed_roots(tmp_path):
    allowed = tmp_path / "data"
    folder = make_image_folder(allowed / "shapes")
    res = run_cli("apply", "--model", "demo", "--dataset", str(folder), "--method", "int8", "--workspace",
                  str(tmp_path / "ws"), "--repeats", "2", "--quiet", env={"NNLAB_ALLOWED_ROOTS": str(allowed)})
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout)
    assert rec["method"] == "int8" and rec["dataset"].startswith("imagefolder-") and rec["id"]
    assert 0.0 <= rec["accuracy"] <= 1.0
    assert Workspace(tmp_path / "ws").load_variant(rec["id"]) is not None


def test_dataset_may_be_a_csv_list_under_the_allowed_roots(tmp_path, monkeypatch, capsys):
    allowed = tmp_path / "data"
    folder = make_image_folder(allowed / "images")
    rows = ["path,label"] + [f"{p.relative_to(allowed).as_posix()},{p.parent.name}"
                             for p in sorted(folder.rglob("*.png"))]
    (allowed / "list.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("NNLAB_ALLOWED_ROOTS", str(allowed))
    rc = main(["apply", "--model", "demo", "--dataset", str(allowed / "list.csv"), "--workspace", str(tmp_path / "ws"),
               "--method", "prune-unstructured", "--set", "sparsity=0.5", "--repeats", "2", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rec = Record.from_json(captured.out)
    assert rec.dataset.startswith("filelist-") and rec.method == "prune-unstructured"


@pytest.mark.parametrize("where, message", [
    ("outside", "is outside the folders nnlab may read"),
    ("missing", "is neither a dataset key"),
])
def test_dataset_path_outside_the_allowed_roots_is_refused(where, message, tmp_path, monkeypatch, capsys):
    folder = make_image_folder(tmp_path / "elsewhere") if where == "outside" else tmp_path / "no-such-folder"
    (tmp_path / "allowed").mkdir()
    monkeypatch.setenv("NNLAB_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    rc = main(["apply", "--model", "demo", "--dataset", str(folder), "--workspace", str(tmp_path / "ws"),
               "--method", "int8", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert message in err and str(folder) in err and "Traceback" not in err
    assert Workspace(tmp_path / "ws").list_variants() == []
