"""References to datasets and models, and the one process-wide cache that resolves them.

Jobs, Ray tasks and pages never hand each other live objects: a dataset travels as a small dict
(:func:`data_ref`) and a model as its workspace id. Resolving a reference goes through a process-wide,
thread-safe cache, so every session and every job of a server shares one copy of each dataset and base model.
The objects returned are shared: never mutate them (compression deep-copies; hooks go on private copies).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from cachetools import LRUCache
from torch import nn

from nnlab import config
from nnlab.data.preprocess import Preprocessing
from nnlab.data.sets import (
    DATASETS,
    ImageDataset,
    Source,
    cache_for,
    dataset_at,
    open_source,
)
from nnlab.i18n import _
from nnlab.models.registry import create_model, load_into
from nnlab.records import Record
from nnlab.workspace import Workspace

DataRef = dict[str, Any]


def data_ref(key: str, path: str = "", preprocessing: dict | None = None) -> DataRef:
    """The reference of a registered dataset (``path`` for folder datasets)."""
    ref: DataRef = {"key": key, "path": path or ""}
    if preprocessing:
        ref["preprocessing"] = preprocessing
    return ref


class _Shared:
    """Loaded objects shared by every session: a bounded :class:`cachetools.LRUCache` under one lock, each key
    loaded once (concurrent callers of the same key wait for that load instead of loading it again)."""

    def __init__(self, size: int) -> None:
        self._items: LRUCache = LRUCache(maxsize=size)
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str, load: Any) -> Any:
        with self._lock:
            if key in self._items:
                return self._items[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one loader per key; the others wait and then read the result
            with self._lock:
                if key in self._items:
                    return self._items[key]
            try:
                value = load()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._items[key] = value
            return value

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def has(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# Bounds: a server holds at most this many opened sources, datasets and base models in memory.
_SOURCES = _Shared(8)
_DATA = _Shared(6)
_MODELS = _Shared(8)


def _data_cache_key(ref: DataRef, root: str | Path | None = None) -> str:
    return json.dumps([str(_root(root).resolve()), ref], sort_keys=True)


def load_source(ref: DataRef) -> Source:
    """The source a reference names (its file list; loaded once per process)."""
    key = ref["key"]
    if key not in DATASETS:
        from nnlab.data.sets import DatasetError

        raise DatasetError(_("unknown dataset {key!r}").format(key=key))
    return _SOURCES.get(json.dumps([key, ref.get("path", "")]), lambda: open_source(key, ref.get("path", "")))


def preprocessing_of(ref: DataRef) -> Preprocessing | None:
    """The reference's preprocessing (None: the source's native view)."""
    pre = ref.get("preprocessing")
    return Preprocessing.from_dict(pre) if pre else None


def data_ready(ref: DataRef, root: str | Path | None = None) -> bool:
    """Whether the dataset can be loaded without decoding images (its data cache is complete)."""
    if _DATA.has(_data_cache_key(ref, root)):
        return True
    src = load_source(ref)
    return cache_for(src, preprocessing_of(ref), _root(root)).status().complete


def load_data(ref: DataRef, root: str | Path | None = None, progress: Any = None, cancel: Any = None) -> ImageDataset:
    """The dataset a reference names, read from the workspace's data cache (loaded once per process; built
    first when the cache is incomplete, with ``progress`` and ``cancel`` when given)."""

    def load() -> ImageDataset:
        return dataset_at(load_source(ref), preprocessing_of(ref), _root(root), progress, cancel)

    return _DATA.get(_data_cache_key(ref, root), load)


def _root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else config.workspace_dir()


def model_key(model_id: str, root: str | Path | None = None) -> str:
    return f"{_root(root).resolve()}::{model_id}"


def load_model(model_id: str, root: str | Path | None = None) -> tuple[nn.Module, Record]:
    """A base model stored in the workspace, in eval mode, with its record (loaded once per process).

    Raises:
        KeyError: no complete model (weights and record) with that id.
    """
    ws = Workspace(_root(root))

    def load() -> tuple[nn.Module, Record]:
        if not ws.has_model(model_id):
            raise KeyError(f"no model {model_id!r} in the workspace {ws.root}")
        record = ws.load_model_record(model_id)
        if record is None:
            raise KeyError(f"the record of {model_id!r} cannot be read")
        c, h, w = model_input_shape(record)
        model = create_model(record.arch, c, model_num_classes(record), (h, w))
        load_into(model, ws.load_model_state(model_id))
        return model.eval(), record

    return _MODELS.get(model_key(model_id, root), load)


def remember_model(model_id: str, model: nn.Module, record: Record, root: str | Path | None = None) -> None:
    """Keep a model in the process cache (a read-only workspace could not store it)."""
    _MODELS.put(model_key(model_id, root), (model.eval(), record))


def forget_model(model_id: str, root: str | Path | None = None) -> None:
    _MODELS.drop(model_key(model_id, root))


def has_model(model_id: str, root: str | Path | None = None) -> bool:
    """Whether the model can be loaded (stored in the workspace, or kept in memory)."""
    key = model_key(model_id, root)
    if _MODELS.has(key):
        return True
    return Workspace(_root(root)).has_model(model_id)


def model_input_shape(record: Record) -> tuple[int, int, int]:
    """``(C, H, W)`` a stored model takes (from its record; older records: from its dataset)."""
    shape = record.extra.get("input_shape")
    if shape:
        return tuple(int(v) for v in shape)  # type: ignore[return-value]
    return load_data(data_ref(record.dataset)).input_shape


def model_num_classes(record: Record) -> int:
    n = record.extra.get("num_classes")
    if n:
        return int(n)
    if record.per_class_accuracy:
        return len(record.per_class_accuracy)
    return load_data(data_ref(record.dataset)).num_classes


def clear() -> None:
    """Forget every cached dataset and model (tests)."""
    _SOURCES.clear()
    _DATA.clear()
    _MODELS.clear()
