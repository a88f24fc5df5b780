"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`, one CPU each).

* A sweep of nine configurations gives the same records on the cluster as in-process: same ids, accuracy to
  the last digit, sizes to the byte, identical artifact bytes; both nodes measured some.
* A Ray worker killed (SIGKILL) while it executes a piece: the piece is retried and the sweep completes with
  every record present exactly once.
* Cancel on the cluster stops the tasks and leaves no half-written variant.
* The command line sweeps on the cluster with ``--ray-address``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import ray  # noqa: F401 - pinned in requirements.txt: missing is a failure, not a skip
from ray._private.authentication_test_utils import reset_auth_token_state  # Ray's own test helper

import compression  # noqa: F401 - registers the methods
from compression.search import search
from nnlab.jobs import pieces as distributed
from nnlab.train import Cancelled
from nnlab.workspace import Workspace

RAY = str(Path(sys.executable).with_name("ray"))
SWEEP = ([[{"method": "prune-unstructured", "sparsity": s}] for s in (0.3, 0.5, 0.7, 0.9)]
         + [[{"method": "quantize-weights", "bits": b}] for b in (8, 4, 2)]
         + [[{"method": "cluster", "k": k}] for k in (16, 4)])
SLOW = [{"method": "prune-unstructured", "sparsity": 0.5, "finetune_epochs": 3}]  # seconds of training


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_processes(dirs: list[str]) -> list[psutil.Process]:
    """Every process of the test cluster: those naming its temp dirs, and their descendants."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.pid not in mine and any(d in cmd for d in dirs):
            found[p.pid] = p
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
    return [p for pid, p in found.items() if pid not in mine]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Start the head and a second node, each with one CPU and its own temp dir; stop them afterwards."""
    root = Path(f"/tmp/nnlab-raytest-{os.getpid()}")  # short: Ray's socket paths must stay under 108 bytes
    head_dir, node_dir = root / "head", root / "node"
    head_dir.mkdir(parents=True, exist_ok=True)
    node_dir.mkdir(parents=True, exist_ok=True)
    token = root / "token"
    home_token = Path.home() / ".ray" / "auth_token"  # the same token as any local Ray of this process
    token.write_text(home_token.read_text().strip() if home_token.is_file() else os.urandom(32).hex())
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
              f"--dashboard-agent-listen-port={free_port()}"]
    dirs = [str(head_dir), str(node_dir)]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", f"--temp-dir={head_dir}", "--include-dashboard=false",
                        f"--dashboard-port={free_port()}", *common],
                       env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([RAY, "start", f"--address={address}", f"--temp-dir={node_dir}", *common],
                       env=env, check=True, capture_output=True, timeout=180)
        with pytest.MonkeyPatch.context() as mp:
            for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED"):
                mp.setenv(k, env[k])
            mp.delenv("RAY_AUTH_TOKEN", raising=False)
            mp.setenv("NNLAB_RAY", "1")
            mp.setenv("NNLAB_RAY_ADDRESS", address)
            distributed.shutdown_ray()
            reset_auth_token_state()  # Ray read RAY_AUTH_MODE at import: make this process see the token
            ex = distributed.ensure_ray(address)
            assert ex.kind == "ray" and ex.nodes == 2 and ex.cpus == 2, ex
            yield {"address": address, "dirs": dirs}
            distributed.shutdown_ray()
        reset_auth_token_state()
    finally:
        procs = cluster_processes(dirs)
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def workspace_with_parent(path: Path, model, base) -> Workspace:
    ws = Workspace(path)
    ws.save_model(base.id, model.state_dict())
    ws.save_model_record(base.id, base)
    return ws


VOLATILE = {"created", "latency", "extra"}  # times differ by nature; extra is compared below, minus timings


def same_part(ws: Workspace, rec) -> dict:
    d = {k: v for k, v in rec.to_dict().items() if k not in VOLATILE}
    d["extra"] = {k: v for k, v in rec.extra.items() if k not in ("seconds", "node", "executor")}
    d["baseline"] = {k: v for k, v in rec.baseline.items() if k != "latency"}  # where the base was timed, not how fast
    d["artifact_sha1"] = hashlib.sha1((ws.root / rec.artifact).read_bytes()).hexdigest()
    return d


@pytest.mark.slow
def test_a_sweep_on_two_nodes_gives_the_in_process_records(cluster, demo, digits, tmp_path):
    model, base, _ = demo
    ws_local = workspace_with_parent(tmp_path / "local", model, base)
    ws_ray = workspace_with_parent(tmp_path / "ray", model, base)
    here = search(model, base, digits, ws_local, budget=0.05, candidates=SWEEP, keep_all=True, use_ray=False,
                  latency_repeats=3)
    seen = []
    there = search(model, base, digits, ws_ray, budget=0.05, candidates=SWEEP, keep_all=True, use_ray=True,
                   latency_repeats=3, task_progress=lambda i, m, f: seen.append(i))
    assert there.executor["kind"] == "ray" and there.executor["nodes"] == 2
    assert here.executor["kind"] == "in-process"
    assert len(here.measured) == len(there.measured) == len(SWEEP) >= 8
    assert [r.id for r in there.measured] == [r.id for r in here.measured]  # same deterministic ids
    for a, b in zip(here.measured, there.measured):
        assert a.accuracy == b.accuracy and a.per_class_accuracy == b.per_class_accuracy  # to the last digit
        assert (a.size_bytes, a.size_gzip_bytes, a.size_dense_bytes) == (b.size_bytes, b.size_gzip_bytes,
                                                                          b.size_dense_bytes)
        assert same_part(ws_local, a) == same_part(ws_ray, b)  # everything but timings, incl. artifact bytes
        assert b.extra["executor"] == "ray" and b.extra["threads"] == 1 and a.extra["threads"] == 1
    assert len({r.extra["node"] for r in there.measured}) == 2  # both nodes measured some
    assert set(seen) == set(range(len(SWEEP)))  # progress of every task came back
    assert [r.id for r in there.frontier] == [r.id for r in here.frontier]


def executing_workers() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::_task"):
            out.append(p)
    return out


@pytest.mark.slow
def test_a_worker_killed_mid_sweep_is_retried_and_every_record_is_there_once(cluster, demo, digits, tmp_path):
    model, base, _ = demo
    ws = workspace_with_parent(tmp_path / "ws", model, base)
    killed: list[int] = []
    worker: dict[int, int] = {}

    def task_progress(i: int, message: str, fraction: float) -> None:
        if message.startswith("started on "):  # "started on host/node pid N"
            worker[i] = int(message.split(" pid ")[1].split()[0])
        if i == 0 and not killed and "fine-tuning" in message:  # the slow piece is training right now
            pid = worker[0]
            ours = {p.pid for p in cluster_processes(cluster["dirs"])}
            assert pid in ours and pid in {p.pid for p in executing_workers()}  # a worker of this cluster, busy
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    cands = [SLOW] + SWEEP[:7]
    res = search(model, base, digits, ws, budget=1.0, candidates=cands, keep_all=True, use_ray=True,
                 latency_repeats=3, task_progress=task_progress)
    assert killed, "no worker was executing the slow piece"
    tasks = {t["index"]: t for t in res.tasks}
    assert tasks[0]["attempts"] == 2 and tasks[0]["status"] == "ok"  # retried once after the kill
    ids = [f"{res.sweep_id}-{i:03d}" for i in range(len(cands))]
    stored = [r.id for r in ws.list_variants()]
    assert sorted(stored) == ids  # every record, exactly once
    dirs = sorted(d.name for d in (ws.root / "variants").iterdir())
    assert dirs == ids  # no half-written leftovers beside them
    assert all(r["status"] == "within budget" for r in res.tried)


@pytest.mark.slow
def test_cancel_on_the_cluster_leaves_no_half_written_variant(cluster, demo, digits, tmp_path):
    model, base, _ = demo
    ws = workspace_with_parent(tmp_path / "ws", model, base)
    state = {"training": False}

    def task_progress(i: int, message: str, fraction: float) -> None:
        if "fine-tuning" in message:
            state["training"] = True

    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        search(model, base, digits, ws, budget=1.0, candidates=[SLOW, SLOW[:1] + [{"method": "cluster", "k": 4}]]
               + SWEEP[:4], keep_all=True, use_ray=True, latency_repeats=3, task_progress=task_progress,
               cancel=lambda: state["training"])
    assert time.monotonic() - t0 < 60
    variants = ws.root / "variants"
    dirs = list(variants.iterdir()) if variants.is_dir() else []
    assert all((d / "record.json").is_file() for d in dirs), [d.name for d in dirs]
    assert len(dirs) < 6


@pytest.mark.slow
def test_the_command_line_sweeps_on_the_cluster(cluster, demo, tmp_path, capsys, monkeypatch):
    from compression.cli import main

    model, base, _ = demo
    ws = workspace_with_parent(tmp_path / "ws", model, base)
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"model": base.id, "dataset": "digits", "variants": SWEEP[4:6]}))
    args = ["sweep", str(sweep), "--workspace", str(ws.root), "--repeats", "3", "--quiet"]
    assert main([*args, "--ray-address", cluster["address"]]) == 0
    on_ray = json.loads(capsys.readouterr().out)
    assert [r["extra"]["executor"] for r in on_ray] == ["ray", "ray"]
    ws2 = workspace_with_parent(tmp_path / "ws2", model, base)
    monkeypatch.delenv("NNLAB_RAY_ADDRESS")  # no address: the command line runs in-process
    assert main([*args[:3], str(ws2.root), *args[4:]]) == 0
    here = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in here] == [r["id"] for r in on_ray]
    assert [r["extra"]["executor"] for r in here] == ["in-process", "in-process"]
    assert [(r["accuracy"], r["size_bytes"]) for r in here] == [(r["accuracy"], r["size_bytes"]) for r in on_ray]
