"""References that travel with a job's pieces, and the engine that maps them (re-exported from
:mod:`nnlab.jobs.engine`).

Models and datasets travel as references (a workspace path and a model id, a dataset key and path; see
:func:`dataset_ref`, :func:`model_ref`), never as live objects pickled from a session; a piece resolves them with
:func:`load_dataset_ref` / :func:`load_model_ref`, or in-process with the live objects :func:`primed` lends.
The engine (:func:`map_tasks`, :func:`executor`, Ray or in-process) lives in :mod:`nnlab.jobs.engine`, which
imports nothing of the data or model layers, so the data cache can map its shards with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing this module stays light (Ray's helper processes import it): torch loads lazily
    import torch

from nnlab.i18n import _
from nnlab.jobs.engine import (  # noqa: F401 - the engine's interface, importable from here as before
    CancelFn,
    Executor,
    PACKAGES,
    PieceFn,
    ProgressFn,
    ROOT,
    Report,
    TaskResult,
    WORKER_LOST,
    _Board,
    _CANCEL_CHECK_S,
    _GRACE_S,
    _LocalReport,
    _POLL_S,
    _RAY,
    _RAY_LOCK,
    _REPORT_EVERY_S,
    _RayReport,
    _clip,
    _collect,
    _import_function,
    _init_kwargs,
    _jsonable,
    _keeper,
    _local_cpus,
    _map_local,
    _map_ray,
    _object_store_bytes,
    _refresh,
    _remote,
    _run_piece,
    _task,
    ensure_ray,
    executor,
    function_path,
    log,
    map_tasks,
    raise_for_outcome,
    node_name,
    ray_address,
    ray_disabled,
    shutdown_ray,
)

_CACHE_LOCK = threading.Lock()
_PRIMED: dict[str, Any] = {}
_HASHES: dict[int, tuple[Any, str]] = {}  # id(obj) → (weak reference, hash): hash shared objects once


def _key(ref: dict) -> str:
    return json.dumps(ref, sort_keys=True)


def _cached_hash(obj: Any, compute: Callable[[Any], str]) -> str:
    import weakref

    with _CACHE_LOCK:
        hit = _HASHES.get(id(obj))
        if hit is not None and hit[0]() is obj:
            return hit[1]
    value = compute(obj)
    with _CACHE_LOCK:
        for k in [k for k, (r, _) in _HASHES.items() if r() is None]:
            del _HASHES[k]
        _HASHES[id(obj)] = (weakref.ref(obj), value)
    return value


def _fingerprint(data: Any) -> str:
    import numpy as np
    import torch

    h = hashlib.sha1()
    for t in (data.x_test, data.y_test):
        h.update(str(tuple(t.shape)).encode())
        n = len(t)
        # up to 512 images spread over the split (a disk cache is not read whole); every label
        if len(t.shape) > 1:
            t = t[torch.from_numpy(np.unique(np.linspace(0, n - 1, min(n, 512)).round().astype(np.int64)))]
        h.update(t.contiguous().numpy().tobytes())
    h.update(json.dumps([list(data.classes), len(data.y_train)]).encode())
    return h.hexdigest()[:16]


def data_fingerprint(data: Any) -> str:
    """A short hash of a dataset's test split and its classes (a worker checks it resolved the same data)."""
    return _cached_hash(data, _fingerprint)


def weights_hash(model: torch.nn.Module) -> str:
    """:func:`nnlab.models.registry.state_dict_hash` of a model (computed once per model object)."""
    from nnlab.models.registry import state_dict_hash

    return _cached_hash(model, lambda m: state_dict_hash(m.state_dict()))


def dataset_ref(data: Any, key: str | None = None, path: str = "", preprocessing: dict | None = None) -> dict:
    """A reference to ``data`` that a worker can load: :func:`nnlab.jobs.refs.data_ref` plus ``id`` and ``fingerprint``.

    ``key`` defaults to the dataset id when it is a registered dataset key (digits, fashion-mnist …); a
    folder dataset needs its key and ``path`` given.
    """
    from nnlab.data.sets import DATASETS
    from nnlab.jobs import refs

    key = key or data.id
    if key not in DATASETS:
        raise ValueError(_("dataset {id!r} has no registered key: pass key= (and path=)").format(id=data.id))
    return {**refs.data_ref(key, path, preprocessing), "id": data.id, "fingerprint": data_fingerprint(data)}


def load_dataset_ref(ref: dict) -> Any:
    """The dataset a reference names (through :func:`nnlab.jobs.refs.load_data`); ``ValueError`` when it is not the
    caller's data (another fallback, another copy on this node)."""
    from nnlab.jobs import refs

    k = _key(ref)
    with _CACHE_LOCK:
        if k in _PRIMED:
            return _PRIMED[k]
    data = refs.load_data(refs.data_ref(ref["key"], ref.get("path", ""), ref.get("preprocessing")))
    if ref.get("id") and data.id != ref["id"]:
        raise ValueError(_("dataset {key!r} loads as {id!r} on {node}, not {expected!r} ({reason})").format(
            key=ref["key"], id=data.id, node=node_name(), expected=ref["id"],
            reason=data.fallback_reason or _("different data on this node")))
    if ref.get("fingerprint") and data_fingerprint(data) != ref["fingerprint"]:
        raise ValueError(_("dataset {key!r} on {node} differs from the caller's (fingerprint)").format(
            key=ref["key"], node=node_name()))
    return data


# How a compressed variant is loaded back: registered by compression.variant (which sits above this package), so
# references to variants resolve wherever that module is imported: in this process and in every Ray worker that
# runs a compression piece.
_VARIANT_LOADER: Callable[[Any, Any], torch.nn.Module] | None = None


def register_variant_loader(fn: Callable[[Any, Any], torch.nn.Module]) -> Callable[[Any, Any], torch.nn.Module]:
    """Let :func:`load_model_ref` load variants with ``fn(workspace, record)``; returns ``fn``."""
    global _VARIANT_LOADER
    _VARIANT_LOADER = fn
    return fn


def model_ref(model: torch.nn.Module, model_id: str, arch: str, workspace: str | Path) -> dict:
    """A reference to a workspace model (base or variant) with the hash of the weights the caller has."""
    return {"model_id": model_id, "arch": arch, "workspace": str(workspace), "weights_hash": weights_hash(model)}


def load_model_ref(ref: dict, data: Any) -> torch.nn.Module:
    """The model a reference names: a state-dict file (``path``), a base model (shared, through
    :func:`nnlab.jobs.refs.load_model`: never mutate it) or a variant; checked against the caller's weights hash."""
    from nnlab.jobs import refs
    from nnlab.models.registry import create_model, load_into
    from nnlab.workspace import Workspace

    k = _key(ref)
    with _CACHE_LOCK:
        if k in _PRIMED:
            return _PRIMED[k]
    ws = Workspace(ref["workspace"])
    mid = ref["model_id"]
    c, h, w = data.input_shape
    if ref.get("path"):
        from nnlab.models.registry import read_state_dict_file

        model = load_into(create_model(ref["arch"], c, data.num_classes, (h, w)), read_state_dict_file(ref["path"]))
        model = model.eval()
    elif ws.has_model(mid):
        model = refs.load_model(mid, ws.root)[0]
    else:
        rec = ws.load_variant(mid)
        if rec is None:
            raise FileNotFoundError(_("model {mid!r} is not in the workspace {root} on {value}").format(
                mid=mid, root=ws.root, value=node_name()))
        if _VARIANT_LOADER is None:
            raise RuntimeError(f"model {mid!r} is a compressed variant, and no variant loader is registered here "
                               "(import compression.variant in the piece's module)")
        model = _VARIANT_LOADER(ws, rec).cpu().eval()
    if ref.get("weights_hash") and weights_hash(model) != ref["weights_hash"]:
        raise ValueError(_("model {mid!r} in {root} on {value} is not the caller's (weights differ)").format(
            mid=mid, root=ws.root, value=node_name()))
    return model


@contextlib.contextmanager
def primed(objects: dict[str, Any]) -> Iterator[None]:
    """Let in-process pieces resolve these references (JSON of the ref → live object) without loading.

    Only for in-process runs: the same references load from disk in Ray workers. Live objects are shared
    read-only (pieces never change a model they were given: compression deep-copies it).
    """
    keys = list(objects)
    with _CACHE_LOCK:
        _PRIMED.update(objects)
    try:
        yield
    finally:
        with _CACHE_LOCK:
            for k in keys:
                _PRIMED.pop(k, None)


def ref_key(ref: dict) -> str:
    """The key :func:`primed` expects for ``ref``."""
    return _key(ref)


def stable_id(*parts: Any, prefix: str = "s", length: int = 10) -> str:
    """A deterministic, workspace-safe id from JSON-able parts (sweep ids, candidate ids)."""
    digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]
    return f"{prefix}-{digest}"


__all__ = ["WORKER_LOST", "Executor", "Report", "TaskResult", "dataset_ref", "ensure_ray", "executor",
           "load_dataset_ref", "load_model_ref", "map_tasks", "model_ref", "node_name", "primed", "ray_address",
           "ray_disabled", "ref_key", "shutdown_ray", "stable_id"]
