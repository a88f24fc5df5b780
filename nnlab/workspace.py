"""The on-disk workspace: base models, their histories and records, and compressed variants.

Layout::

    <root>/models/<model_id>/{model.safetensors, record.json, history.json}
    <root>/variants/<variant_id>/{artifact…, record.json}
    <root>/runs/<key>.json            (cached derived results, e.g. learning curves)
    <root>/results/<key>.npz          (per-sample arrays: logits, features …)
    <root>/jobs/<key>.json            (the job system's state, see nnlab.jobs.manager)

Every write goes to a temporary file in the same folder and is renamed into place, so a reader never
sees a half-written file. A record that fails to parse is reported and skipped, never fatal.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from nnlab import config
from nnlab.i18n import _
from nnlab.records import Record

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class WorkspaceError(OSError):
    """The workspace cannot be written (read-only, disk full) or an id is invalid."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WorkspaceError(_("the workspace folder {parent} is not writable: {detail}").format(
            parent=path.parent, detail=exc.strerror or exc)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise WorkspaceError(_("could not write {name}: {detail}").format(
            name=path.name, detail=exc.strerror or exc)) from exc


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    For writers that insist on a filename (ONNX export, safetensors).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkspaceError(_("the workspace folder {parent} is not writable: {detail}").format(
            parent=path.parent, detail=exc.strerror or exc)) from exc
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_state_dict(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save a state dict as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def check_id(item_id: str) -> str:
    if not _SAFE_ID.match(item_id or ""):
        raise WorkspaceError(_("invalid id {item_id!r}").format(item_id=item_id))
    return item_id


class Workspace:
    """A folder holding models, variants and cached runs."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else config.workspace_dir()
        self.errors: list[str] = []

    # paths
    def model_dir(self, model_id: str) -> Path:
        return self.root / "models" / check_id(model_id)

    def variant_dir(self, variant_id: str) -> Path:
        return self.root / "variants" / check_id(variant_id)

    def run_path(self, key: str) -> Path:
        return self.root / "runs" / f"{check_id(key)}.json"

    def writable(self) -> bool:
        """True when a file can be created in the workspace right now."""
        try:
            atomic_write_bytes(self.root / ".write-test", b"ok")
            return True
        except WorkspaceError:
            return False

    # base models
    def has_model(self, model_id: str) -> bool:
        try:
            d = self.model_dir(model_id)
        except WorkspaceError:  # a path or any other non-id names no stored model
            return False
        return (d / "model.safetensors").is_file() and (d / "record.json").is_file()

    def save_model(self, model_id: str, state: dict[str, torch.Tensor], history: list[dict] | None = None) -> Path:
        """Store a base model's weights and history; returns the weights' path.

        The model counts as present only once :meth:`save_model_record` has written its record.
        """
        d = self.model_dir(model_id)
        save_state_dict(d / "model.safetensors", state)
        if history is not None:
            atomic_write_text(d / "history.json", json.dumps(history, indent=1))
        return d / "model.safetensors"

    def save_model_record(self, model_id: str, record: Record) -> None:
        """Write a base model's record (last: it marks the model complete)."""
        d = self.model_dir(model_id)
        record.artifact = str((d / "model.safetensors").relative_to(self.root))
        atomic_write_text(d / "record.json", record.to_json())

    def load_model_state(self, model_id: str) -> dict[str, torch.Tensor]:
        return load_state_dict(self.model_dir(model_id) / "model.safetensors")

    def load_model_record(self, model_id: str) -> Record | None:
        return self._read_record(self.model_dir(model_id) / "record.json")

    def load_history(self, model_id: str) -> list[dict]:
        p = self.model_dir(model_id) / "history.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return []

    # variants
    def save_variant(self, record: Record) -> Path:
        """Write a variant's record atomically (its artifact is already in :meth:`variant_dir`)."""
        d = self.variant_dir(record.id)
        atomic_write_text(d / "record.json", record.to_json())
        return d

    def list_variants(self) -> list[Record]:
        """All readable variant records, oldest first; unreadable ones are noted in ``errors``."""
        out: list[Record] = []
        self.errors = []
        base = self.root / "variants"
        if not base.is_dir():
            return out
        for d in sorted(base.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                rec = self._read_record(d / "record.json")
                if rec is not None:
                    out.append(rec)
        return sorted(out, key=lambda r: (r.created, r.id))

    def load_variant(self, variant_id: str) -> Record | None:
        return self._read_record(self.variant_dir(variant_id) / "record.json")

    def rename_variant(self, variant_id: str, name: str) -> Record:
        rec = self.load_variant(variant_id)
        if rec is None:
            raise WorkspaceError(_("no variant {variant_id!r}").format(variant_id=variant_id))
        name = name.strip()
        if not name or len(name) > 120:
            raise WorkspaceError(_("a name must have 1 to 120 characters"))
        rec.name = name
        self.save_variant(rec)
        return rec

    def delete_variant(self, variant_id: str) -> None:
        d = self.variant_dir(variant_id)
        if d.is_dir():
            trash = d.with_name(f".deleted-{d.name}-{time.monotonic_ns()}")
            os.replace(d, trash)  # atomic: the variant disappears at once
            shutil.rmtree(trash, ignore_errors=True)

    # cached runs
    def save_run(self, key: str, payload: dict) -> None:
        atomic_write_text(self.run_path(key), json.dumps(payload))

    def load_run(self, key: str) -> dict | None:
        try:
            return json.loads(self.run_path(key).read_text())
        except (OSError, ValueError):
            return None

    # per-sample arrays (evaluation logits, features): one .npz per key, written atomically
    def result_path(self, key: str) -> Path:
        return self.root / "results" / f"{check_id(key)}.npz"

    def save_arrays(self, key: str, **arrays: np.ndarray) -> Path:
        """Store named arrays under ``key`` (uncompressed .npz, atomic)."""
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        path = self.result_path(key)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def load_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key`` (None when absent or unreadable)."""
        path = self.result_path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            return None

    def _read_record(self, path: Path) -> Record | None:
        if not path.is_file():
            return None
        try:
            return Record.from_json(path.read_text())
        except (OSError, ValueError, TypeError) as exc:
            self.errors.append(f"{path.parent.name}: unreadable record ({type(exc).__name__})")
            return None


def safe_key(*parts: str) -> str:
    """A filesystem-safe workspace key made of ``parts`` (long ones keep a prefix and gain a hash)."""
    import hashlib

    raw = "_".join(str(p) for p in parts)
    key = re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip("._-") or "x"
    if len(key) > 100:
        key = f"{key[:80]}-{hashlib.sha1(raw.encode()).hexdigest()[:12]}"
    return key


def new_id(prefix: str) -> str:
    """A fresh, sortable, filesystem-safe id."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{os.urandom(3).hex()}"
