"""The foundation's job kinds: training the demo model, registering a user's model, the evaluation pass.

Each is registered with :func:`nnlab.jobs.manager.job_kind` and takes JSON parameters (dataset references and model
ids, see :mod:`nnlab.jobs.refs`), so it can be shared by sessions, re-run after a restart, and run anywhere.
Results go to the workspace; the job's own result is a small summary naming them.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache
from torch import nn

from nnlab.base import demo_id, ensure_demo, profile_model, profile_table
from nnlab.data.sets import ImageDataset
from nnlab.evaluate import EvalResult, result_from_logits, streamed_pass
from nnlab.i18n import _
from nnlab.jobs import refs
from nnlab.jobs.manager import JobContext, job_kind
from nnlab.measure import BATCHES, artifact_sizes, state_sizes
from nnlab.models.registry import (
    CheckpointError,
    arch_label,
    create_model,
    load_into,
    output_shape_ok,
    read_state_dict_file,
)
from nnlab.workspace import Workspace, WorkspaceError, atomic_write_bytes, safe_key

SOURCES = ("upload", "pretrained", "random")


def _label(params: dict) -> str:
    d = params.get("data", {})
    return d.get("key", "?") + (f" ({Path(d['path']).name})" if d.get("path") else "")


# --- the demo model -------------------------------------------------------------------------------------

@job_kind("train-demo", label=lambda p: _("Train the demo model on {data}").format(data=_label(p)))
def train_demo(params: dict, ctx: JobContext) -> dict:
    """Train (once) and store the demo model of a dataset; returns its id and accuracy."""
    data = refs.load_data(params["data"], ctx.workspace)
    ws = Workspace(ctx.workspace)
    arch = params.get("arch", "demo-cnn")
    model, record, _ = ensure_demo(data, ws, progress=ctx.train_progress(0.0, 0.9), arch=arch,
                                   cancel=ctx.cancelled, measuring=lambda m: ctx.progress(m, 0.92))
    if not ws.has_model(record.id):  # a read-only workspace: keep it in this process
        refs.remember_model(record.id, model, record, ws.root)
    return {"model_id": record.id, "accuracy": record.accuracy}


# --- a user's model ---------------------------------------------------------------------------------------

def user_model_id(arch: str, data: ImageDataset, source: str, token: str) -> str:
    """The workspace id of a user model: architecture, dataset, where the weights came from, and a token
    (the checkpoint's content hash, or the seed of random weights)."""
    return safe_key(arch, data.id, source, token)


def stash_upload(ws: Workspace, blob: bytes, filename: str) -> tuple[str, str]:
    """Store an uploaded checkpoint in the workspace (content-addressed); returns ``(relative path, sha)``."""
    sha = hashlib.sha1(blob).hexdigest()[:16]
    suffix = Path(filename).suffix.lower() if Path(filename).suffix.lower() in (
        ".pt", ".pth", ".bin", ".safetensors") else ".pt"
    rel = f"uploads/{sha}{suffix}"
    path = ws.root / rel
    if not path.is_file():
        atomic_write_bytes(path, blob)
    return rel, sha


def check_upload(blob: bytes, filename: str, arch: str, data: ImageDataset) -> None:
    """Refuse a checkpoint that cannot be this architecture's weights for this data (a clear message).

    Reads the state dict without running code and checks every tensor against the architecture; cheap enough to
    run before the upload is stored and the measuring job starts.
    """
    from nnlab.models.registry import check_state_dict, read_state_dict

    c, h, w = data.input_shape
    check_state_dict(create_model(arch, c, data.num_classes, (h, w)), read_state_dict(blob, filename))


@job_kind("register-model", label=lambda p: _("Load and measure {arch} ({source}) on {data}").format(
    arch=p.get("arch"), source=p.get("source", {}).get("kind"), data=_label(p)))
def register_model(params: dict, ctx: JobContext) -> dict:
    """Build a user's model (uploaded weights, pretrained, or seeded random), check it fits the data, measure
    it and store it in the workspace under ``params["model_id"]``."""
    data = refs.load_data(params["data"], ctx.workspace)
    ws = Workspace(ctx.workspace)
    arch, source, model_id = params["arch"], params["source"], params["model_id"]
    kind = source.get("kind")
    if kind not in SOURCES:
        raise ValueError(_("unknown weights source {kind!r}").format(kind=kind))
    c, h, w = data.input_shape
    ctx.progress(_("building the model"), 0.05)
    model = create_model(arch, c, data.num_classes, (h, w), pretrained=(kind == "pretrained"))
    if kind == "upload":
        load_into(model, read_state_dict_file(ws.root / source["file"]))
    elif kind == "random":
        _seeded(model, int(source.get("seed", 0)))
    model.eval()
    output_shape_ok(model, data.input_shape, data.num_classes)
    ctx.check_cancel()
    label = arch_label(arch, translated=False)  # a stored name: the same in every language
    name = params.get("name") or f"{label} ({ {'upload': 'your weights', 'pretrained': 'pretrained', 'random': 'random weights'}[kind] })"
    record = evaluate_and_profile(ws, model, data, model_id, name, arch, {"source": source}, ctx.progress,
                                  ctx.cancelled, sizes=False)
    ctx.check_cancel()
    store_model(ws, model_id, model, record)
    return {"model_id": model_id, "accuracy": record.accuracy}


def store_model(ws: Workspace, model_id: str, model: nn.Module, record: Any, history: list[dict] | None = None) -> None:
    """Store a profiled model's weights and record; its sizes are measured from the stored file (profiled with
    ``sizes=False``). A workspace that cannot store it: the model is kept in memory, sized from its weights."""
    try:
        path = ws.save_model(model_id, model.state_dict(), history)
        record.size_bytes, record.size_gzip_bytes = artifact_sizes(path)
        record.size_dense_bytes = record.size_bytes
        ws.save_model_record(model_id, record)
    except WorkspaceError:
        if not record.size_bytes:
            record.size_bytes, record.size_gzip_bytes = state_sizes(model)
            record.size_dense_bytes = record.size_bytes
        refs.remember_model(model_id, model, record, ws.root)


def evaluate_and_profile(ws: Workspace, model: nn.Module, data: ImageDataset, model_id: str, name: str, arch: str,
                         extra: dict | None = None, progress: Any = None, cancel: Any = None,
                         sizes: bool = True) -> Any:
    """A freshly loaded model's first numbers, then its record (what the register-model job does after building it).

    First the streamed test pass in fp32 (:func:`ensure_evaluation`: its first number in seconds, shown by every page while
    the job runs, then stored as the evaluation every page reads; a pass already stored is reused); when the split is
    large enough to pay for a runtime choice, the profile's own timing of every runtime is measured right after the
    first number and the rest of the pass runs in the fastest. Then the profile (:func:`nnlab.base.profile_model`),
    whose record takes its accuracy from that pass: the test split runs once.
    """
    from nnlab.errors import Cancelled

    def say(message: str, fraction: float | None = None, **metrics: Any) -> None:
        if progress is not None:
            progress(message, fraction, **metrics)

    def sub(message: str, fraction: float | None = None, **metrics: Any) -> None:
        say(message, None if fraction is None else 0.05 + 0.55 * fraction, **metrics)

    timed: dict[str, Any] = {}

    def rest_runtime() -> Any:
        from nnlab.runtimes.bulk import BulkRuntime

        say(_("timing the model in every runtime (the rest of the pass runs in the fastest)"))
        table = timed["table"] = profile_table(model, data)
        fastest = table.fastest(BATCHES[-1])
        return BulkRuntime(table.runners.get(fastest), fastest, _("{runtime}: measured fastest when the model was "
                                                                  "profiled").format(runtime=fastest))

    # fp32: a base record's accuracy is the full test pass in full precision (variants' drops are measured against
    # it to a tenth of a point; a bf16 pass that agrees on 99.5 % of the top-1s could move it by half a point)
    res = ensure_evaluation(ws, model_id, model, data, "test", sub, cancel, precision="fp32",
                            rest_runtime=rest_runtime)
    if cancel is not None and cancel():
        raise Cancelled(_("cancelled by the user"))
    say(_("measuring the model (latency, MACs, training accuracy)"), 0.6)
    pass_info = ws.load_run(runtime_key(model_id, data.id, "test")) or {}
    return profile_model(model, data, model_id, name, arch, None, test_eval=res, table=timed.get("table"),
                         sizes=sizes, extra={**(extra or {}), "accuracy_pass": {
                             k: pass_info.get(k) for k in ("runtime", "precision", "fp32_runtime", "seconds",
                                                           "first_seconds")}})


def _seeded(model: nn.Module, seed: int) -> None:
    """Reproducible random weights without touching the global RNG."""
    from nnlab.models.randinit import seeded_init

    seeded_init(model, seed)


# --- the one evaluation pass ------------------------------------------------------------------------------

def eval_key(model_id: str, data_id: str, split: str) -> str:
    """Workspace key of a model's stored per-sample results on a split."""
    return safe_key("eval", model_id, data_id, split)


def runtime_key(model_id: str, data_id: str, split: str) -> str:
    """Workspace run key of the runtime an evaluation pass ran in (:func:`nnlab.runtimes.bulk.bulk_runtime`)."""
    return safe_key("evalrt", model_id, data_id, split)


def choice_key(model_id: str) -> str:
    """Workspace run key of the bulk runtime measured for a model by a pass (for models whose record has no
    latencies): later passes of any size build it instead of measuring again."""
    return safe_key("bulkchoice", model_id)


def stream_key(model_id: str, data_id: str, split: str) -> str:
    """Workspace run key of a running evaluation pass's counts, rewritten after every chunk (see
    :func:`nnlab.evaluate.streamed_pass`): the first sample's accuracy, then ``done`` of ``total`` and ``correct``."""
    return safe_key("evalstream", model_id, data_id, split)


def stored_precision(ws: Workspace, model_id: str, data_id: str, split: str) -> str:
    """The precision the stored pass ran its bulk in ("fp32", "bf16"; "" when there is none)."""
    info = ws.load_run(runtime_key(model_id, data_id, split))
    return "" if info is None else str(info.get("precision", "fp32"))


def ensure_evaluation(ws: Workspace, model_id: str, model: nn.Module, data: ImageDataset, split: str,
                      progress: Any = None, cancel: Any = None, min_runtime_images: int | None = None,
                      precision: str = "auto", rest_runtime: Any = None) -> EvalResult:
    """The stored per-sample results of a model on a split, computed (and stored) first when missing.

    The pass runs in the fastest runtime verified for the model (:mod:`nnlab.runtimes.bulk`: the one measured when
    the model was profiled, whatever the split's size; else chosen by measurement when the split has at least
    ``min_runtime_images`` images, default :data:`nnlab.runtimes.bulk.MIN_IMAGES`), streamed
    (:func:`nnlab.evaluate.streamed_pass`): a stratified first sample in fp32, whose counts are stored at once under
    :func:`stream_key`, then the rest in bf16 where the CPU has it and the fidelity gate passes (``precision="fp32"``:
    never), the counts rewritten after every chunk. The runtime, precision and gate are stored beside the results.
    ``precision="fp32"`` also replaces a stored pass that ran in reduced precision.

    When the runtime must be chosen by measurement (no choice known for the model and a large split), the first
    sample runs in eager PyTorch and the choice is measured after the first number: by ``rest_runtime()`` (a
    :class:`nnlab.runtimes.bulk.BulkRuntime`; the register-model job passes the profile's own timing of every runtime,
    so the model is timed once), else by :func:`nnlab.runtimes.bulk.bulk_runtime`.
    """
    from nnlab.runtimes import bulk

    res = load_evaluation(ws, model_id, data.id, split)
    if res is not None and not (precision == "fp32" and stored_precision(ws, model_id, data.id, split) not in
                                ("", "fp32")):
        return res
    record = ws.load_model_record(model_id) if ws.has_model(model_id) else None
    prefer = ""
    if min_runtime_images is None:  # the choice measured for this model once: when profiled, or by an earlier pass
        prefer = _fastest_bulk_runtime(record) or (ws.load_run(choice_key(model_id)) or {}).get("runtime", "")
    chosen: dict[str, Any] = {}
    if bulk.would_measure(model, len(data.labels(split)), min_runtime_images, prefer):
        # the choice costs exports and timing: the first sample runs in eager PyTorch meanwhile, the choice after it
        rt = bulk.BulkRuntime(None, bulk.EAGER, "eager PyTorch (the first sample, before the runtime is chosen)")

        def rest_fp32() -> tuple[Any, str]:
            got = rest_runtime() if rest_runtime is not None else bulk.bulk_runtime(
                model, data, split, min_images=0)
            chosen["rt"] = got
            return got.runner, got.runtime
    else:
        rt, rest_fp32 = bulk.bulk_runtime(model, data, split, min_images=min_runtime_images, prefer=prefer), None
    if progress is not None:
        progress(_("evaluating the {split} split in {runtime}").format(split=split, runtime=rt.runtime), 0.0)
    skey = stream_key(model_id, data.id, split)
    try:  # counts of an earlier pass must not pass for this one's
        ws.save_run(skey, {"phase": "starting", "total": len(data.labels(split)), "done": 0, "correct": 0})
    except (OSError, WorkspaceError):
        pass

    def on_chunk(state: dict) -> None:
        try:
            ws.save_run(skey, state)
        except (OSError, WorkspaceError):
            pass  # a read-only workspace: the page shows the job's progress only
        if progress is not None:
            acc = state["correct"] / max(1, state["done"])
            progress(_("evaluating the {split} split in {runtime}: {done}/{total} images").format(
                split=split, runtime=state["runtime"], done=f"{state['done']:,}", total=f"{state['total']:,}"),
                state["done"] / max(1, state["total"]), accuracy=acc)

    logits, info = streamed_pass(model, data, split, runner=rt.runner, runtime=rt.runtime, precision=precision,
                                 on_chunk=on_chunk, cancel=cancel, rest_fp32=rest_fp32)
    rt = chosen.get("rt", rt)
    if "rt" in chosen and any(f.get("median_ms") for f in rt.figures):  # measured now: every later pass reuses it
        try:
            ws.save_run(choice_key(model_id), {"runtime": rt.runtime, "summary": rt.summary})
        except (OSError, WorkspaceError):
            pass
    labels = data.labels(split).numpy()
    key = eval_key(model_id, data.id, split)
    stored = {**rt.to_dict(), "fp32_runtime": rt.runtime, "runtime": info["runtime"], "precision": info["precision"],
              "gate": info["gate"], "gate_note": info["gate_note"], "gate_code": info["gate_code"],
              "forced_fp32": precision == "fp32",
              "first_images": info["first_images"], "first_seconds": info["first_seconds"],
              "seconds": info["seconds"]}
    try:
        ws.save_run(runtime_key(model_id, data.id, split), stored)  # first: the arrays mark completion
        ws.save_arrays(key, logits=logits.astype(np.float32), labels=labels.astype(np.int64))
    except WorkspaceError:
        with _MEMORY_LOCK:
            _MEMORY[(str(ws.root), key)] = (logits, labels)
    return result_from_logits(logits, labels)


def _fastest_bulk_runtime(record: Any) -> str:
    """The fp32 runtime measured fastest for a model at its largest timed batch ("" when never measured)."""
    from nnlab.measure import fastest_fp32

    lats = getattr(record, "latencies", None) or {}
    batches = sorted({int(b) for by_batch in lats.values() for b in by_batch})
    return fastest_fp32(record, batches[-1])[0] if batches else ""


@job_kind("evaluate", label=lambda p: _("Evaluate {model} on the {split} split").format(model=p["model_id"],
                                                                                        split=p["split"]))
def evaluate_job(params: dict, ctx: JobContext) -> dict:
    """One pass of a stored model over a split; per-sample logits go to the workspace."""
    data = refs.load_data(params["data"], ctx.workspace)
    model, _ = refs.load_model(params["model_id"], ctx.workspace)
    split = params["split"]
    res = ensure_evaluation(Workspace(ctx.workspace), params["model_id"], model, data, split, ctx.progress,
                            ctx.cancelled, precision=params.get("precision", "auto"))
    return {"key": eval_key(params["model_id"], data.id, split), "accuracy": res.accuracy,
            "samples": len(res.labels)}


# Evaluations kept in memory when the workspace is read-only: at most this many (least recently used out).
_MEMORY: LRUCache = LRUCache(maxsize=16)
_MEMORY_LOCK = threading.Lock()


def load_evaluation(ws: Workspace, model_id: str, data_id: str, split: str) -> EvalResult | None:
    """The stored per-sample results of a model on a split (None when not computed yet)."""
    key = eval_key(model_id, data_id, split)
    arrays = ws.load_arrays(key)
    if arrays is not None and "logits" in arrays:
        return result_from_logits(arrays["logits"], arrays["labels"])
    with _MEMORY_LOCK:  # a pass kept in memory belongs to its workspace: another one's model has the same id
        kept = _MEMORY.get((str(ws.root), key))
    if kept is not None:
        return result_from_logits(*kept)
    return None


__all__ = [
    "CheckpointError",
    "demo_id",
    "eval_key",
    "evaluate_job",
    "load_evaluation",
    "register_model",
    "stored_precision",
    "stream_key",
    "stash_upload",
    "train_demo",
    "user_model_id",
]


# --- training or fine-tuning any architecture -----------------------------------------------------------------

INITS = ("scratch", "pretrained", "model")


def trained_model_id(arch: str, data_id: str, init: dict, config: dict) -> str:
    """The workspace id of a model trained by nnlab: architecture, dataset and a hash of how it was trained."""
    import json

    blob = json.dumps({"init": init, "config": config}, sort_keys=True)
    return safe_key(arch, data_id, "trained", hashlib.sha1(blob.encode()).hexdigest()[:10])


@job_kind("train-model", label=lambda p: _("Train {arch} on {data} ({init}, {epochs} epochs)").format(
    arch=p["arch"], data=_label(p), init=p["init"]["kind"], epochs=p["config"].get("epochs", "?")))
def train_model_job(params: dict, ctx: JobContext) -> dict:
    """Train an architecture from scratch, from pretrained weights or from a stored model; store the result."""
    import copy
    import time

    from nnlab.models.randinit import seeded_init
    from nnlab.train import TrainConfig, train_model

    data = refs.load_data(params["data"], ctx.workspace)
    ws = Workspace(ctx.workspace)
    arch, init = params["arch"], params["init"]
    cfg = TrainConfig(**params["config"])
    if init.get("kind") not in INITS:
        raise ValueError(_("unknown starting point {value!r}; choose one of {choices}").format(
            value=init.get('kind'), choices=', '.join(INITS)))
    c, h, w = data.input_shape
    ctx.progress(_("building the model"), 0.01)
    if init["kind"] == "model":
        base, _rec = refs.load_model(init["model_id"], ws.root)
        model = copy.deepcopy(base)  # the stored model stays as it is
    else:
        model = create_model(arch, c, data.num_classes, (h, w), pretrained=(init["kind"] == "pretrained"))
        if init["kind"] == "scratch":
            seeded_init(model, cfg.seed)
    output_shape_ok(model, data.input_shape, data.num_classes)
    t0 = time.perf_counter()
    history = train_model(model, data, cfg, progress=ctx.train_progress(0.0, 0.9), cancel=ctx.cancelled)
    seconds = time.perf_counter() - t0
    model = model.cpu().eval()
    ctx.check_cancel()
    ctx.progress(_("measuring the trained model (accuracy, latency, MACs)"), 0.92)
    model_id = params["model_id"]
    label = arch_label(arch, translated=False)  # a stored name: the same in every language
    name = params.get("name") or f"{label} trained by nnlab ({init['kind']}, {cfg.epochs} epochs)"
    hist = [e.to_dict() for e in history]
    record = profile_model(model, data, model_id, name, arch, None,
                           extra={"trained_by": "nnlab-train", "train_config": cfg.to_dict(), "init": init,
                                  "train_seconds": round(seconds, 1)}, sizes=False)
    store_model(ws, model_id, model, record, hist)
    return {"model_id": model_id, "accuracy": record.accuracy, "seconds": round(seconds, 1),
            "history": hist}


# --- the data cache -----------------------------------------------------------------------------------------

@job_kind("build-dataset", label=lambda p: (_("Decode {data} into the data cache at the model's preprocessing")
                                             if p["data"].get("preprocessing")
                                             else _("Decode {data} into the data cache")).format(data=_label(p)))
def build_dataset_job(params: dict, ctx: JobContext) -> dict:
    """Decode and preprocess a dataset's images once into the workspace's data cache (resumable)."""
    data = refs.load_data(params["data"], ctx.workspace, progress=ctx.progress, cancel=ctx.cancelled)
    return {"id": data.id, "train": len(data.y_train), "test": len(data.y_test),
            "unreadable": len(data.unreadable)}
