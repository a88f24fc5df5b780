"""One engine for pieces: learning-curve subsets, sensitivity cells and data-cache shards run through map_tasks.

Each use is checked through a wrapper around its module's ``map_tasks`` (it must be called, with the right piece
function, and its results are what the use returns), against the sequential computation it replaced (same
numbers), and for the sweeps' semantics: cancel stops the remaining pieces, a failing piece ends as "failed" while
the others run, a piece whose worker was lost is split and retried. A real local Ray runs all three at the end.
"""

from __future__ import annotations

import copy
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from compression import sensitivity as S
from compression.pruning import prunable_layers, split_train
from diagnostics import curves as C
from nnlab.data import _cachebuild, filelists
from nnlab.data import _cacheworker as worker
from nnlab.data.cache import DataCache, DataCacheError
from nnlab.data.preprocess import imagenet
from nnlab.errors import Cancelled
from nnlab.jobs import pieces
from nnlab.jobs.pieces import Executor, TaskResult
from nnlab.models.randinit import seeded_init
from nnlab.models.registry import create_model
from nnlab.train import TrainConfig, quick_eval, train_model
from tests.test_datacache import make_folder, reference_uint8

PRE = imagenet().with_changes(size=(32, 32), resize=36)  # small slots: quick builds
CFG = TrainConfig(epochs=2, batch_size=8)


class Spy:
    """Stands in for a module's ``map_tasks``: records each call and its results, then runs the real one
    (optionally with ``use_ray`` forced, or with some results replaced by ``fake(piece, index)``)."""

    def __init__(self, force_use_ray: bool | None = None, fake=None) -> None:
        self.calls: list[dict] = []
        self.force, self.fake = force_use_ray, fake

    def __call__(self, fn, pieces_, progress=None, cancel=None, **kw):
        asked = kw.get("use_ray")
        if self.force is not None:
            kw["use_ray"] = self.force
        faked = {i: r for i, p in enumerate(pieces_) if (r := self.fake and self.fake(p, i)) is not None}
        rest = [i for i in range(len(pieces_)) if i not in faked]
        ran = pieces.map_tasks(fn, [pieces_[i] for i in rest], progress, cancel, **kw) if rest else []
        results = [faked.get(i) for i in range(len(pieces_))]
        for i, r in zip(rest, ran):
            r.index = i
            results[i] = r
        self.calls.append({"fn": fn.__name__, "pieces": pieces_, "use_ray": asked, "kw": kw, "results": results})
        return results

    def statuses(self) -> list[list[str]]:
        return [[r.status for r in c["results"]] for c in self.calls]


def _spy(monkeypatch, module, **kw) -> Spy:
    spy = Spy(**kw)
    monkeypatch.setattr(module, "map_tasks", spy)
    return spy


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    monkeypatch.setenv("NNLAB_RAY", "0")


# --- learning curves -----------------------------------------------------------------------------------------

def _build(data):
    c, h, w = data.input_shape
    return lambda: create_model("demo-cnn-small", c, data.num_classes, (h, w))


def _sequential_curve(build, data, fractions, cfg, seed=0):
    """The loop learning_curve ran before it used map_tasks."""
    out = []
    for i, (f, idx) in enumerate(zip(fractions, C.nested_subsets(data.y_train.numpy(), fractions, seed))):
        hist = train_model(seeded_init(build(), seed * 1000 + i), data, cfg, indices=idx)
        out.append((float(f), len(idx), 1.0 - hist[-1].train_acc, 1.0 - hist[-1].test_acc,
                    [{k: v for k, v in h.to_dict().items() if k != "seconds"} for h in hist]))
    return out


def _numbers(points):
    return [(p.fraction, p.n_train, p.train_error, p.test_error,
             [{k: v for k, v in h.items() if k != "seconds"} for h in p.history]) for p in points]


def test_curve_subsets_run_as_pieces_with_the_sequential_numbers(tiny_data, monkeypatch):
    spy = _spy(monkeypatch, C)
    fractions = [0.25, 0.5, 1.0]
    seen: list[float] = []
    points = C.learning_curve(_build(tiny_data), tiny_data, fractions, CFG, seed=1,
                              progress=lambda f, m: seen.append(f))
    assert len(spy.calls) == 1 and spy.calls[0]["fn"] == "curve_piece"
    assert [p["index"] for p in spy.calls[0]["pieces"]] == [0, 1, 2]
    assert all(r.ok and r.executor == "in-process" for r in spy.calls[0]["results"])
    assert _numbers(points) == _sequential_curve(_build(tiny_data), tiny_data, fractions, CFG, seed=1)
    assert seen[-1] == 1.0 and all(b >= a for a, b in pairwise(seen))


def test_curve_cancel_stops_the_remaining_subsets(tiny_data, monkeypatch):
    spy = _spy(monkeypatch, C)
    seen: list[float] = []
    first = 15 / (15 + 30 + 60)  # the first subset's share of the work: cancel once it is done
    with pytest.raises(Cancelled):
        C.learning_curve(_build(tiny_data), tiny_data, [0.25, 0.5, 1.0], CFG,
                         progress=lambda f, m: seen.append(f), cancel=lambda: bool(seen) and seen[-1] >= first - 1e-9)
    assert spy.statuses() == [["ok", "cancelled", "cancelled"]]
    assert spy.calls[0]["results"][2].attempts == 0  # never started


def test_a_failing_subset_is_reported_like_a_sweep_piece_and_the_others_run(tiny_data, monkeypatch):
    spy = _spy(monkeypatch, C)
    real = C.train_model

    def train(model, data, cfg, indices=None, **kw):
        if len(indices) == 30:
            raise RuntimeError("out of memory")
        return real(model, data, cfg, indices=indices, **kw)

    monkeypatch.setattr(C, "train_model", train)
    with pytest.raises(RuntimeError, match=r"50% of the training set \(30 samples\): RuntimeError: out of memory"):
        C.learning_curve(_build(tiny_data), tiny_data, [0.25, 0.5, 1.0], CFG)
    assert spy.statuses() == [["ok", "failed", "ok"]]
    failed = spy.calls[0]["results"][1]
    assert failed.error == "RuntimeError: out of memory" and failed.attempts == 1 and failed.value is None


# --- sensitivity ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(digits):
    c, h, w = digits.input_shape
    model = seeded_init(create_model("demo-cnn-small", c, digits.num_classes, (h, w)), 3)
    train_model(model, digits, TrainConfig(epochs=2, batch_size=64))
    return model.eval()


def _sequential_sensitivity(model, data, kind, levels, max_samples, seed=0):
    """The loop layer_sensitivity ran before it used map_tasks (validation split)."""
    fn, _ = S.TRANSFORMS[kind]
    work = copy.deepcopy(model).cpu().eval()
    idx = split_train(len(data.y_train), seed)[1][:max_samples]
    _, base = quick_eval(work, data, "train", indices=idx, device=torch.device("cpu"))
    rows = []
    for name, mod in prunable_layers(work):
        original = mod.weight.detach().clone()
        for level in levels:
            with torch.no_grad():
                mod.weight.copy_(fn(original, level))
            _, acc = quick_eval(work, data, "train", indices=idx, device=torch.device("cpu"))
            rows.append({"layer": name, "level": level, "accuracy": acc, "drop": base - acc,
                         "params": original.numel()})
        with torch.no_grad():
            mod.weight.copy_(original)
    return base, rows


def test_sensitivity_cells_run_as_pieces_with_the_sequential_table(trained, digits, monkeypatch):
    spy = _spy(monkeypatch, S)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    seen: list[float] = []
    table = S.layer_sensitivity(trained, digits, "prune", levels=(0.3, 0.9), max_samples=300,
                                progress=lambda m, f: seen.append(f))
    assert len(spy.calls) == 1 and spy.calls[0]["fn"] == "cell_piece"
    layers = [n for n, _ in prunable_layers(trained)]
    assert [(p["layer"], p["level"]) for p in spy.calls[0]["pieces"]] == [(n, lv) for n in layers for lv in (0.3, 0.9)]
    assert all(r.ok and r.executor == "in-process" for r in spy.calls[0]["results"])
    base, rows = _sequential_sensitivity(trained, digits, "prune", (0.3, 0.9), 300)
    assert table.base_accuracy == base and table.rows == rows
    assert max(r["drop"] for r in rows) > 0.05  # the comparison is not between flat tables
    assert seen[-1] == 1.0 and all(b >= a for a, b in pairwise(seen))
    assert all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())  # the model is untouched


def test_sensitivity_cancel_stops_the_remaining_cells(trained, digits, monkeypatch):
    spy = _spy(monkeypatch, S)
    done: list[str] = []
    with pytest.raises(Cancelled):
        S.layer_sensitivity(trained, digits, "prune", levels=(0.3, 0.9), max_samples=100,
                            progress=lambda m, f: done.append(m) if "accuracy" in m else None,
                            cancel=lambda: len(done) >= 3)
    (statuses,) = spy.statuses()
    assert statuses[:3] == ["ok"] * 3 and set(statuses[3:]) == {"cancelled"} and len(statuses) == 10


def _boom(w: torch.Tensor, level: float) -> torch.Tensor:
    if level == 2:
        raise ValueError("no such level")
    return w * level


def test_a_failing_cell_is_reported_like_a_sweep_piece_and_the_others_run(trained, digits, monkeypatch):
    spy = _spy(monkeypatch, S)
    monkeypatch.setitem(S.TRANSFORMS, "boom", (_boom, True))
    with pytest.raises(RuntimeError, match=r"features\.0 at 2: ValueError: no such level"):
        S.layer_sensitivity(trained, digits, "boom", levels=(1, 2), layers=["features.0"], max_samples=50)
    assert spy.statuses() == [["ok", "failed"]]
    assert spy.calls[0]["results"][1].error == "ValueError: no such level"


# --- data-cache shards ---------------------------------------------------------------------------------------

def _pretend_ray(monkeypatch, cpus: int = 2) -> None:
    """Let the build take its Ray path (waves of pieces) while map_tasks runs them in-process."""
    monkeypatch.setattr(_cachebuild, "executor", lambda use_ray=None: Executor("ray", address="local", cpus=cpus))


def _exact(cache: DataCache, files: filelists.FileList) -> bool:
    return torch.equal(cache.images("all")[:], reference_uint8(files, cache.paths("all"), PRE))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    make_folder(src, 100)
    return src


def test_shards_in_the_calling_thread_are_pieces(folder, tmp_path, monkeypatch):
    spy = _spy(monkeypatch, _cachebuild)
    files = filelists.image_folder(folder)
    stats = DataCache(files, PRE, tmp_path).build(workers=0)
    assert stats.workers == 0 and stats.decoded == 100 and stats.unreadable == []
    assert {c["fn"] for c in spy.calls} == {"decode_piece"} and all(c["use_ray"] is False for c in spy.calls)
    shards = [t[1] for c in spy.calls for p in c["pieces"] for t in p["tasks"]]
    assert sorted(shards) == sorted(files.relpaths)  # every image in exactly one piece
    assert all(len(p["tasks"]) <= _cachebuild.CHUNK for c in spy.calls for p in c["pieces"])
    assert _exact(DataCache(files, PRE, tmp_path), files)


def test_shards_go_to_ray_in_waves_each_committed(folder, tmp_path, monkeypatch):
    _pretend_ray(monkeypatch, cpus=1)
    spy = _spy(monkeypatch, _cachebuild, force_use_ray=False)
    commits: list[int] = []  # per commit of rows: how many waves had ended
    real_commit = _cachebuild.Build._commit

    def commit(self, force=False):
        if self.pending_rows:
            commits.append(len(spy.calls))
        return real_commit(self, force)

    monkeypatch.setattr(_cachebuild.Build, "_commit", commit)
    files = filelists.image_folder(folder)
    stats = DataCache(files, PRE, tmp_path).build(commit_seconds=0)  # the smallest waves: 2 pieces per CPU
    assert stats.workers == 1 and stats.decoded == 100 and stats.unreadable == []
    assert all(c["use_ray"] is True and c["kw"]["threads_per_task"] == 1 for c in spy.calls)
    assert [len(c["pieces"]) for c in spy.calls] == [2, 2, 3]  # 100 images = 7 shards; no wave of 1 at the end
    assert sorted(set(commits)) == [1, 2, 3]  # committed wave by wave, not once at the end
    assert _exact(DataCache(files, PRE, tmp_path), files)


def test_a_shard_whose_worker_is_lost_is_retried_alone_then_the_image_is_unreadable(folder, tmp_path,
                                                                                      monkeypatch):
    files = filelists.image_folder(folder)
    poison = files.relpaths[37]
    lost = TaskResult(0, "failed", error=f"{pieces.WORKER_LOST} after 2 attempt(s): WorkerCrashedError",
                      executor="ray", attempts=2)

    def crash(piece: dict, i: int) -> TaskResult | None:  # the worker dies on the poisoned image, every time
        return lost if any(t[1] == poison for t in piece["tasks"]) else None

    _pretend_ray(monkeypatch)
    spy = _spy(monkeypatch, _cachebuild, force_use_ray=False, fake=crash)
    stats = DataCache(files, PRE, tmp_path).build()
    sizes = [[len(p["tasks"]) for p in c["pieces"]] for c in spy.calls]
    assert sizes == [[16] * 6 + [4], [1] * 16]  # the lost shard's images, alone; the poisoned one not a 3rd time
    assert [s.count("failed") for s in spy.statuses()] == [1, 1]
    assert stats.decoded == 100 and [r for r, _ in stats.unreadable] == [poison]
    assert "decoder crashed" in stats.unreadable[0][1] and "worker lost" in stats.unreadable[0][1]
    cache = DataCache(files, PRE, tmp_path)
    assert cache.status().ready == 99 and _exact(cache, files)


def test_a_shard_that_fails_by_itself_stops_the_build_instead_of_marking_images(folder, tmp_path, monkeypatch):
    def broken(piece: dict, i: int) -> TaskResult | None:  # e.g. a node without the shared folder
        return TaskResult(i, "failed", error="FileNotFoundError: the source folder is not on this node",
                          executor="ray", attempts=1) if i == 1 else None

    _pretend_ray(monkeypatch)
    spy = _spy(monkeypatch, _cachebuild, force_use_ray=False, fake=broken)
    files = filelists.image_folder(folder)
    with pytest.raises(DataCacheError, match="source folder is not on this node"):
        DataCache(files, PRE, tmp_path).build()
    assert spy.statuses() == [["ok", "failed"] + ["ok"] * 5]
    status = DataCache(files, PRE, tmp_path).status()
    assert status.unreadable == 0 and status.ready == 100 - 16  # the other shards were committed


def test_cancel_stops_the_shards_and_the_next_build_resumes(folder, tmp_path, monkeypatch):
    _pretend_ray(monkeypatch)
    spy = _spy(monkeypatch, _cachebuild, force_use_ray=False)
    files = filelists.image_folder(folder)
    polls: list[int] = []
    with pytest.raises(Cancelled):  # polled before each wave, each piece and each image: stops in the 2nd piece
        DataCache(files, PRE, tmp_path).build(cancel=lambda: polls.append(1) or len(polls) > 20)
    (statuses,) = spy.statuses()
    assert statuses == ["ok", "ok"] + ["cancelled"] * 5  # the 2nd piece stopped part-way and kept what it did
    done = DataCache(files, PRE, tmp_path).status().ready
    assert 16 < done < 32
    stats = DataCache(files, PRE, tmp_path).build(workers=0)
    assert stats.resumed and stats.decoded == 100 - done and _exact(DataCache(files, PRE, tmp_path), files)


class _Quiet:
    """A report for calling a piece function directly."""

    def __call__(self, message: str, fraction: float) -> None:
        pass

    def cancelled(self) -> bool:
        return False


def test_a_piece_of_a_killed_build_does_not_write_into_a_newer_build(folder, tmp_path):
    files = filelists.image_folder(folder)
    cache = DataCache(files, PRE, tmp_path)
    cache.build(workers=0)
    first = (cache.path / worker.TOKEN).read_text()
    cache.build(workers=0)  # nothing to decode, but the build holds the cache: a new id
    ctx = worker.Context(str(cache.data_path), cache.slot_shape, cache.storage, files.root).to_message()
    piece = {"cache": ctx, "token": first, "tasks": [[0, files.relpaths[5]]]}  # slot 0 holds another image
    before = cache.data_path.read_bytes()
    with pytest.raises(RuntimeError, match="another build"):
        worker.decode_piece(piece, _Quiet())
    assert cache.data_path.read_bytes() == before
    piece["token"] = (cache.path / worker.TOKEN).read_text()
    assert piece["token"] != first
    out = worker.decode_piece(piece, _Quiet())  # the current build's piece writes
    assert out["rows"][0][:2] == [0, files.relpaths[5]] and out["rows"][0][4] is None
    assert cache.data_path.read_bytes() != before
    elsewhere = {**piece, "cache": {**ctx, "root": str(tmp_path / "not-here")}}  # a node without the source
    with pytest.raises(FileNotFoundError, match="not on this node"):
        worker.decode_piece(elsewhere, _Quiet())


# --- a real local Ray ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NNLAB_RAY", "1")
        mp.setenv("NNLAB_RAY_CPUS", "2")
        mp.delenv("NNLAB_RAY_ADDRESS", raising=False)
        pieces.shutdown_ray()
        ex = pieces.ensure_ray()
        if ex.kind != "ray":
            pytest.skip(f"Ray does not start here: {ex.reason}")
        yield ex
        pieces.shutdown_ray()


def test_all_three_on_a_local_ray(local_ray, demo, digits, folder, tmp_path, monkeypatch):
    from nnlab.workspace import Workspace

    monkeypatch.setenv("NNLAB_RAY", "1")
    for module in (C, S, _cachebuild):
        _spy(monkeypatch, module)
    spies = {m.__name__: m.map_tasks for m in (C, S, _cachebuild)}
    # data-cache shards in Ray tasks
    files = filelists.image_folder(folder)
    stats = DataCache(files, PRE, tmp_path).build(use_ray=True)  # local builds use Ray only when asked
    assert stats.workers == 2 and stats.unreadable == [] and _exact(DataCache(files, PRE, tmp_path), files)
    assert {r.executor for c in spies[_cachebuild.__name__].calls for r in c["results"]} == {"ray"}
    # curve subsets: Ray workers rebuild the architecture and load digits by reference; same points as in-process
    cfg = TrainConfig(epochs=1, batch_size=64)
    on_ray = C.learning_curve(_build(digits), digits, [0.5, 1.0], cfg, arch="demo-cnn-small", threads=1)
    here = C.learning_curve(_build(digits), digits, [0.5, 1.0], cfg, use_ray=False, threads=1)
    assert [[r.executor for r in x["results"]] for x in spies[C.__name__].calls] == [["ray"] * 2, ["in-process"] * 2]
    assert _numbers(on_ray) == _numbers(here)
    # sensitivity cells: Ray workers load the stored demo model by reference
    model, record, _ = demo
    ref = pieces.model_ref(model, record.id, record.arch, Workspace().root)
    kw = {"levels": (0.5, 0.9), "layers": ["features.0", "classifier.2"], "max_samples": 200, "threads": 1}
    t_ray = S.layer_sensitivity(model, digits, "prune", model_ref=ref, **kw)
    t_here = S.layer_sensitivity(model, digits, "prune", use_ray=False, **kw)
    assert [[r.executor for r in x["results"]] for x in spies[S.__name__].calls] == [["ray"] * 4, ["in-process"] * 4]
    assert t_ray.rows == t_here.rows and t_ray.base_accuracy == t_here.base_accuracy
    assert np.isfinite(t_ray.matrix()).all()
