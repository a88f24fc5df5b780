"""A decode worker of the data cache: file → preprocessed uint8 pixels → its slot in the cache's data file.

The build runs this module as ``python -m nnlab.data._cacheworker``: a fresh process that imports numpy, PIL and
the pixel half of :class:`nnlab.data.preprocess.Preprocessing`, never torch (no fork of a threaded torch
process, no 300 MB of torch per worker). Messages are pickled over the process's stdin/stdout pipes:

* parent → worker: first a context dict (data file, slot shape, pixel preprocessing, root folder), then
  chunks (lists of tasks), then ``None`` to stop. A task is ``(slot, relpath)`` for a file, or
  ``(slot, relpath, bytes, (c, h, w))`` for an image given as raw uint8 pixels.
* worker → parent: per chunk, a list of ``(slot, relpath, size, stamp, error)``; ``error`` is None when the
  slot now holds the image, else why the image is unreadable. ``("fatal", message)`` when the data file
  cannot be written (disk full): the build stops.

Each worker writes its slots itself with ``os.pwrite``; the parent fsyncs the data file and only then commits
the slots to the index, so a slot is trusted only after its bytes are on disk. The same functions decode
in the parent process when a build runs without workers.

:func:`decode_piece` is the same decoding as a piece of :func:`nnlab.jobs.pieces.map_tasks` (a Ray task, or the
calling thread), for builds that do not use these worker processes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from nnlab.data.images import MAX_BYTES, load_image_bytes
from nnlab.data.preprocess import Preprocessing
from nnlab.i18n import _


class FatalWriteError(OSError):
    """The data file cannot be written (disk full, read-only): no image can be stored."""


@dataclass
class Context:
    """What a worker needs to decode and store: where, in which shape, with which preprocessing."""

    data_path: str
    slot_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    root: str

    @property
    def slot_bytes(self) -> int:
        c, h, w = self.slot_shape
        return c * h * w

    def to_message(self) -> dict:
        return {"data_path": self.data_path, "slot_shape": list(self.slot_shape),
                "preprocessing": self.preprocessing.to_dict(), "root": self.root}

    @classmethod
    def from_message(cls, d: dict) -> Context:
        return cls(d["data_path"], tuple(d["slot_shape"]), Preprocessing.from_dict(d["preprocessing"]), d["root"])


def decode_file(path: str, pre: Preprocessing) -> tuple[np.ndarray, int, int]:
    """Read, check and preprocess one image file: ``(C×H×W uint8, size, mtime_ns)`` of what was read.

    The fingerprint comes from ``fstat`` before reading, so a file changed during the read is decoded
    again by the next build.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size > MAX_BYTES:
            raise ValueError(_("larger than {value} MiB").format(value=MAX_BYTES // 2**20))
        data = f.read()
    return pre.to_uint8(load_image_bytes(data)), st.st_size, st.st_mtime_ns


def decode_pixels(raw: bytes, shape: tuple[int, int, int], pre: Preprocessing) -> np.ndarray:
    """Preprocess an image given as raw uint8 ``C×H×W`` pixels (the built-in sets)."""
    a = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    im = Image.fromarray(a[0] if shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0)))  # L or RGB
    return pre.to_uint8(im)


def write_slot(fd: int, slot: int, pixels: np.ndarray, ctx: Context) -> None:
    """Write one image's pixels into its slot (loops over short writes)."""
    if pixels.shape != ctx.slot_shape:
        raise ValueError(_("preprocessing gave {shape}, the cache holds {slot_shape}").format(
            shape=pixels.shape, slot_shape=ctx.slot_shape))
    buf = memoryview(np.ascontiguousarray(pixels)).cast("B")
    offset, done = slot * ctx.slot_bytes, 0
    try:
        while done < len(buf):
            done += os.pwrite(fd, buf[done:], offset + done)
    except OSError as exc:
        raise FatalWriteError(f"the data cache {ctx.data_path} cannot be written: {exc.strerror or exc}") from exc


def decode_chunk(fd: int, tasks: list[tuple], ctx: Context) -> list[tuple[int, str, int, int, str | None]]:
    """Decode and store a chunk of tasks; an unreadable image becomes an error entry, never an exception.

    Raises:
        FatalWriteError: The data file cannot be written.
    """
    out = []
    for task in tasks:
        slot, rel = task[0], task[1]
        size = stamp = -1
        try:
            if len(task) == 4:
                pixels = decode_pixels(task[2], task[3], ctx.preprocessing)
                size, stamp = len(task[2]), -1  # the parent knows the array's stamp
            else:
                pixels, size, stamp = decode_file(os.path.join(ctx.root, rel), ctx.preprocessing)
            write_slot(fd, slot, pixels, ctx)
            out.append((slot, rel, size, stamp, None))
        except FatalWriteError:
            raise
        except Exception as exc:  # an unreadable image is listed, never fatal
            out.append((slot, rel, size, stamp, _reason(exc)))
    return out


TOKEN = "build.token"  # beside the data file: the id of the build that holds the lock now


def decode_piece(piece: dict, report: Any) -> dict:
    """Piece function (:func:`nnlab.jobs.pieces.map_tasks`): decode one shard of a build into its slots.

    The piece is JSON: ``cache`` (:meth:`Context.to_message`), ``token`` (the build's id, see :data:`TOKEN`) and
    ``tasks``: ``[slot, relpath]`` for a file, ``[slot, relpath, base64 pixels, [c, h, w]]`` for raw pixels.
    Before each image the piece checks the cancel flag and that its build still holds the cache (a task left
    over from a killed build never writes into slots a newer build reuses).

    Returns:
        ``rows``: ``[slot, relpath, size, stamp, error]`` per image stored or found unreadable; ``stopped``: True
        when cancelled part-way (``rows`` holds what was stored); ``fatal``: why the data file cannot be written
        ("" when it can).

    Raises:
        FileNotFoundError: The data file or the source folder is not on this node (they must be shared).
        RuntimeError: Another build has taken the cache over.
    """
    ctx = Context.from_message(piece["cache"])
    tasks = piece["tasks"]
    shared = "on a Ray cluster it must be at the same path on every node (or build without Ray: NNLAB_RAY=0)"
    if any(len(t) == 2 for t in tasks) and not os.path.isdir(ctx.root):
        raise FileNotFoundError(_("the source folder {root} is not on this node: {shared}").format(
            root=ctx.root, shared=shared))
    try:
        fd = os.open(ctx.data_path, os.O_WRONLY)
    except FileNotFoundError as exc:
        raise FileNotFoundError(_("the data cache {data_path} is not on this node: {shared}").format(
            data_path=ctx.data_path, shared=shared)) from exc
    token_path = os.path.join(os.path.dirname(ctx.data_path), TOKEN)
    rows: list[list] = []
    try:
        for k, task in enumerate(tasks):
            if report.cancelled():
                return {"rows": rows, "stopped": True, "fatal": ""}
            if _read_token(token_path) != piece["token"]:
                raise RuntimeError("another build of this data cache has started; this piece's build is gone")
            if len(task) == 4:
                task = (task[0], task[1], base64.b64decode(task[2]), tuple(task[3]))
            try:
                rows += [list(r) for r in decode_chunk(fd, [task], ctx)]
            except FatalWriteError as exc:
                return {"rows": rows, "stopped": False, "fatal": str(exc)}
            report(_("{value} of {n_tasks} images").format(value=k + 1, n_tasks=len(tasks)), (k + 1) / len(tasks))
    finally:
        os.close(fd)
    return {"rows": rows, "stopped": False, "fatal": ""}


def _read_token(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot be read: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return text[:300]


def main() -> int:
    """The worker loop: context, then chunks until ``None`` or the parent goes away."""
    from multiprocessing.connection import Connection

    inbox = Connection(os.dup(0), writable=False)
    outbox = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # a stray print must not corrupt the message stream
    try:
        ctx = Context.from_message(inbox.recv())
        fd = os.open(ctx.data_path, os.O_WRONLY)
    except (EOFError, OSError, KeyError, ValueError) as exc:
        with contextlib.suppress(OSError):
            outbox.send(("fatal", f"a decode worker cannot start: {exc}"))
        return 1
    try:
        while True:
            try:
                tasks = inbox.recv()
            except (EOFError, OSError):
                return 0
            if tasks is None:
                return 0
            try:
                reply: object = decode_chunk(fd, tasks, ctx)
            except FatalWriteError as exc:
                reply = ("fatal", str(exc))
            try:
                outbox.send(reply)
            except OSError:  # the parent is gone
                return 0
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
