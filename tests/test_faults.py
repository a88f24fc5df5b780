"""Faults and concurrency: a process killed mid-write or mid-compression leaves a loadable workspace;
concurrent compressions of one shared model never change it and store every variant exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from nnlab.evaluate import evaluate
from nnlab.models.registry import model_hash
from nnlab.workspace import Workspace
from tests.conftest import ROOT
from tests.waiting import wait_for

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from nnlab.workspace import atomic_write_bytes
    target = Path(sys.argv[1])
    i = 0
    while True:
        i += 1
        atomic_write_bytes(target, bytes([i % 251]) * 3_000_000)
        print(i, flush=True)
""")

COMPRESSOR = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    import compression
    from compression.registry import config_from_dict
    from compression.variant import make_variant
    from nnlab.base import ensure_demo
    from nnlab.data.sets import load_digits
    from nnlab.workspace import Workspace
    data = load_digits()
    model, rec, _ = ensure_demo(data, Workspace())
    ws = Workspace(sys.argv[1])
    i = 0
    while True:
        cfg = config_from_dict({"method": "prune-unstructured", "sparsity": 0.1 + 0.05 * (i % 10)})
        make_variant(model, rec.id, "demo-cnn", [cfg], data, ws, latency_repeats=2)
        i += 1
        print("done", i, flush=True)
""")


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _read_lines_until(proc: subprocess.Popen, count: int, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
    return lines


def test_kill_during_atomic_writes_never_leaves_torn_file(tmp_path):
    target = tmp_path / "big.bin"
    proc = _spawn(WRITER, str(target))
    try:
        lines = _read_lines_until(proc, 3, 60)
        assert len(lines) == 3
        # kill it while it writes: a temporary file of a fourth (or later) version is there
        wait_for(lambda: list(tmp_path.glob(".big.bin.*.tmp")), 30, 0.005, what="a write in progress")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    data = target.read_bytes()
    assert len(data) == 3_000_000 and len(set(data)) == 1  # one complete version, never a mix or a prefix
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "big.bin"]
    assert all(name.endswith(".tmp") for name in leftovers)  # only ignorable temporaries may remain


def test_kill_during_compression_leaves_loadable_workspace(demo, digits, tmp_path):
    from compression.variant import load_variant_model

    root = tmp_path / "ws"
    proc = _spawn(COMPRESSOR, str(root))
    try:
        done = _read_lines_until(proc, 2, 300)
        assert len(done) == 2, done

        def compressing() -> bool:  # a later compression has begun its folder and not yet written its record
            variants = root / "variants"
            return variants.is_dir() and any(d.is_dir() and not d.name.startswith(".") and not (d / "record.json")
                                             .exists() for d in variants.iterdir())

        wait_for(compressing, 120, 0.005, what="a compression in progress")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        done += [line for line in proc.stdout.read().splitlines() if line.startswith("done")]
    finally:
        proc.kill()
    ws = Workspace(root)  # "restart": a fresh reader of the same folder
    records = ws.list_variants()
    assert not ws.errors
    # every reported variant is there; the interrupted one is absent (or complete, if it finished unreported)
    assert len(records) in (len(done), len(done) + 1)
    for rec in records:
        assert rec.status == "ok"
        model = load_variant_model(ws, rec)
        assert evaluate(model, digits, "test").accuracy == pytest.approx(rec.accuracy, abs=1e-9)
    # an interrupted variant's folder has no record and is not listed
    folders = [d for d in (root / "variants").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert len(folders) >= len(records)


def test_concurrent_compressions_share_one_model(demo, digits, tmp_path):
    """Eight sessions at once compress the same (cached, shared) model object."""
    from compression.registry import config_from_dict
    from compression.variant import make_variant

    model, rec, _ = demo
    before = model_hash(model)
    ws = Workspace(tmp_path / "ws")
    levels = [0.2 + 0.05 * i for i in range(8)]
    results: dict[float, object] = {}
    errors: list[BaseException] = []

    def session(level: float) -> None:
        try:
            cfg = config_from_dict({"method": "prune-unstructured", "sparsity": level})
            results[level] = make_variant(model, rec.id, "demo-cnn", [cfg], digits, ws, latency_repeats=2)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(lv,)) for lv in levels]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert model_hash(model) == before  # the shared model is bit-identical
    stored = ws.list_variants()
    assert sorted(r.id for r in stored) == sorted(r.id for r in results.values())  # each exactly once
    assert len({r.id for r in stored}) == 8
    for lv, r in results.items():  # each session got its own settings back
        assert r.config["sparsity"] == pytest.approx(lv)
        pruned = [row for row in r.layers if "sparsity" in row and row.get("params", 1)]
        assert pruned
    acc = np.array([results[lv].accuracy for lv in levels])
    assert np.all(np.isfinite(acc))
