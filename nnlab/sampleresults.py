"""Per-sample results of a pass (logits, losses, features) stored compactly, read back memory-mapped.

A :class:`SampleResults` is a folder of ``.npy`` files, one per array, plus ``meta.json``. Each array is
written atomically — whole (:meth:`SampleResults.save`) or batch by batch as a streaming pass produces it
(:meth:`SampleResults.writer`) — and read back as a read-only ``np.memmap`` so every page can index 50,000+
samples without loading them (50,000 × 512 float16 features are 51 MB on disk, nothing in RAM until used).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnlab.workspace import atomic_path, atomic_write_text

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ArrayWriter:
    """Appends row blocks of one array to a temporary ``.npy``; on :meth:`close` it is fsynced and renamed into
    place, on :meth:`abort` (or an exception in a ``with`` block) it is removed.

    Args:
        path: The final ``.npy`` path.
        rows: Total rows the pass will write (checked at close).
        row_shape: Shape of one row (``()`` for a scalar per sample).
        dtype: Stored dtype; blocks are cast to it (float32 logits → float16 features, …).
    """

    def __init__(self, path: Path, rows: int, row_shape: Sequence[int], dtype) -> None:
        self.rows, self.row_shape, self.dtype = int(rows), tuple(int(v) for v in row_shape), np.dtype(dtype)
        self.written = 0
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(path))
        self._f = open(self._tmp, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *self.row_shape)}
        np.lib.format.write_array_header_1_0(self._f, header)

    def write(self, block) -> None:
        """Append the next rows (numpy array or tensor; shape ``k × row_shape``)."""
        a = block.detach().cpu().numpy() if hasattr(block, "detach") else np.asarray(block)
        a = np.ascontiguousarray(a, dtype=self.dtype)
        if a.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {self.row_shape} expected, got {a.shape[1:]}")
        if self.written + len(a) > self.rows:
            raise ValueError(f"more than the {self.rows} rows declared")
        self._f.write(a.tobytes())
        self.written += len(a)

    def close(self) -> None:
        """Check the row count, then commit the file atomically."""
        if self._f.closed:
            return
        if self.written != self.rows:
            self.abort()
            raise ValueError(f"{self.written} rows written, {self.rows} declared")
        self._f.flush()
        self._f.close()
        self._stack.close()  # fsync + rename

    def abort(self) -> None:
        """Discard what was written."""
        if not self._f.closed:
            self._f.close()
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __del__(self) -> None:  # dropped without close(): nothing is left behind
        if not getattr(self, "_f", None) or self._f.closed:
            return
        try:
            self.abort()
        except Exception:
            pass

    def __enter__(self) -> ArrayWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class SampleResults:
    """A folder of per-sample arrays.

    Args:
        folder: Where the arrays live (e.g. ``<workspace>/runs/<key>/``); created on first write.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        if not _NAME.match(name or ""):
            raise ValueError(f"invalid result name {name!r}")
        return self.folder / f"{name}.npy"

    def writer(self, name: str, rows: int, row_shape: Sequence[int] = (), dtype=np.float32) -> ArrayWriter:
        """A writer for array ``name`` filled batch by batch (use it as a context manager)."""
        return ArrayWriter(self._path(name), rows, row_shape, dtype)

    def save(self, name: str, array, dtype=None) -> Path:
        """Store a whole array atomically (cast to ``dtype`` when given)."""
        a = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
        a = np.ascontiguousarray(a, dtype=dtype or a.dtype)
        if a.ndim == 0:
            raise ValueError("per-sample results need one row per sample, got a scalar")
        with self.writer(name, len(a), a.shape[1:], a.dtype) as w:
            w.write(a)
        return self._path(name)

    def load(self, name: str) -> np.ndarray:
        """Array ``name``, memory-mapped read-only.

        Raises:
            FileNotFoundError: Not stored (yet).
        """
        path = self._path(name)
        return np.load(path, mmap_mode="r", allow_pickle=False)

    __getitem__ = load

    def __contains__(self, name: str) -> bool:
        return self._path(name).is_file()

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.npy") if _NAME.match(p.stem))

    def save_meta(self, meta: dict) -> None:
        """Write ``meta.json`` atomically (write it last: it marks a pass complete)."""
        atomic_write_text(self.folder / "meta.json", json.dumps(meta, indent=1, sort_keys=True))

    def meta(self) -> dict | None:
        try:
            return json.loads((self.folder / "meta.json").read_text())
        except (OSError, ValueError):
            return None
