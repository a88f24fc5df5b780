"""Images on disk read in bounded memory, and streamed in batches through a torch DataLoader.

:class:`DiskImages` looks like the uint8 ``N×C×H×W`` tensor an :class:`nnlab.data.sets.ImageDataset` holds
(``len``, ``shape``, ``dtype``, ``ndim``, indexing by int, slice, index array or tensor), but reads each
request from a file of fixed-size slots with ``os.pread``. Not ``np.memmap``: pages of a mapped file count in
the process's RSS as they are touched, so streaming a 7.5 GB split through a memmap grows the process by
7.5 GB; ``pread`` copies into a fresh buffer and leaves the rest to the kernel's page cache.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nnlab.i18n import _

_OPEN_LOCK = threading.Lock()


class DiskImages:
    """uint8 images of one shape stored as slots of a file, ``slots[i]`` holding image ``i``.

    Args:
        path: The data file (slot ``s`` starts at byte ``s·C·H·W``).
        shape: ``(C, H, W)`` of one image.
        slots: int64 slot of each image, in this view's order.

    Picklable (a DataLoader worker gets a copy and opens the file itself); each process opens its own
    descriptor on first read.
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], slots: np.ndarray | Sequence[int]) -> None:
        self.path = str(path)
        self.item_shape = tuple(int(v) for v in shape)
        self.slot_bytes = int(np.prod(self.item_shape))
        self.slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        self._fd: int | None = None
        self._pid = -1

    # --- tensor-like surface ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.slots), *self.item_shape))

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def nbytes(self) -> int:
        return len(self.slots) * self.slot_bytes

    def __repr__(self) -> str:
        return f"DiskImages({tuple(self.shape)}, uint8, {self.path})"

    def __getitem__(self, key) -> torch.Tensor:
        """An int gives one ``C×H×W`` image; a slice, an index array/list or a tensor (int or bool) a batch."""
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0
                                                   and not key.dtype == torch.bool):
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for {len(self)} images")
            return self.read(np.array([i % len(self)]))[0]
        return self.read(self._positions(key))

    def _positions(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return np.arange(len(self))[key]
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"a boolean mask needs {len(self)} entries, got {idx.shape}")
            return np.flatnonzero(idx)
        if idx.size == 0:
            return np.zeros(0, np.int64)
        if not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"images are indexed by int, slice, index array or mask, not {idx.dtype}")
        idx = idx.reshape(-1).astype(np.int64)
        if idx.min() < -len(self) or idx.max() >= len(self):
            raise IndexError(f"an index is out of range for {len(self)} images")
        return idx % max(1, len(self))

    def subset(self, indices) -> DiskImages:
        """A view of some images (no pixels are read)."""
        return DiskImages(self.path, self.item_shape, self.slots[self._positions(indices)])

    # --- reading ----------------------------------------------------------------------------------------

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            with _OPEN_LOCK:  # two threads reading at once open one descriptor, not two
                if self._fd is None or self._pid != os.getpid():
                    self._fd, self._pid = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC), os.getpid()
        return self._fd

    def read(self, positions: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """Images at ``positions`` (in that order) as a uint8 ``N×C×H×W`` tensor; runs of adjacent slots are
        read with one call."""
        slots = self.slots[np.asarray(positions, dtype=np.int64)]
        n = len(slots)
        if out is None:
            out = torch.empty((n, *self.item_shape), dtype=torch.uint8)
        elif out.shape != (n, *self.item_shape) or out.dtype != torch.uint8 or not out.is_contiguous() \
                or out.device.type != "cpu":
            raise ValueError(_("out must be a contiguous CPU uint8 tensor of shape {value}").format(
                value=(n, *self.item_shape)))
        if n == 0:
            return out
        buf = out.numpy().reshape(n, self.slot_bytes)
        fd = self._descriptor()
        breaks = np.flatnonzero(np.diff(slots) != 1) + 1
        starts = np.concatenate([[0], breaks]).tolist()
        ends = np.concatenate([breaks, [n]]).tolist()
        for a, b in zip(starts, ends):
            _pread_into(fd, memoryview(buf[a:b]).cast("B"), int(slots[a]) * self.slot_bytes, self.path)
        return out

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}


def _pread_into(fd: int, view: memoryview, offset: int, path: str) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(f"{path} ends before byte {offset + len(view)} (the data cache is truncated)")
        done += got


# --- streaming ------------------------------------------------------------------------------------------

class _Batches(Dataset):
    """Batch ``b`` of ``order``: one item of a DataLoader with ``batch_size=None`` (a worker reads whole
    batches, with as few ``pread`` calls as the order allows)."""

    def __init__(self, images: DiskImages, labels: np.ndarray | None, order: np.ndarray, batch_size: int) -> None:
        self.images, self.labels, self.order, self.batch_size = images, labels, order, batch_size

    def __len__(self) -> int:
        return (len(self.order) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        x = self.images.read(idx)
        y = torch.from_numpy(self.labels[idx]) if self.labels is not None else torch.full((len(idx),), -1)
        return x, y, torch.from_numpy(idx)


def batch_loader(images: DiskImages, labels: np.ndarray | Sequence[int] | None = None, *,
                 order: np.ndarray | Sequence[int] | None = None, batch_size: int = 256, num_workers: int = 2,
                 prefetch_factor: int = 2, multiprocessing_context=None) -> DataLoader:
    """A DataLoader of ``(uint8 images B×C×H×W, int64 labels B, int64 positions B)`` in ``order``.

    Args:
        images: What to read.
        labels: int64 label per image (``-1`` in the batches when None).
        order: Positions to visit (default: all, in order); a shuffled order (``torch.randperm`` with a
            ``torch.Generator``) gives a seeded epoch.
        batch_size: Images per batch (the last one may be shorter).
        num_workers: Reader processes (each opens the file itself); 0 reads in the calling thread.
        prefetch_factor: Batches each worker reads ahead.
        multiprocessing_context: Passed to the DataLoader (default: torch's, ``fork`` on Linux; the readers
            only call ``pread``).

    Memory stays near ``(num_workers · prefetch_factor + 1) · batch_size · C·H·W`` bytes, whatever the size
    of the set. Normalise in the consumer (``Preprocessing.normalize``): uint8 crosses the process boundary
    four times cheaper than float32.
    """
    order = np.arange(len(images), dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)
    if lab is not None and len(lab) != len(images):
        raise ValueError(_("{n_images} images but {n_lab} labels").format(n_images=len(images), n_lab=len(lab)))
    if len(order) and (order.min() < 0 or order.max() >= len(images)):
        raise IndexError(f"the order has positions outside 0…{len(images) - 1}")
    if batch_size < 1:
        raise ValueError(_("batch_size must be at least 1"))
    workers = max(0, int(num_workers))
    return DataLoader(_Batches(images, lab, order, batch_size), batch_size=None, shuffle=False,
                      num_workers=workers, prefetch_factor=prefetch_factor if workers else None,
                      multiprocessing_context=multiprocessing_context if workers else None,
                      persistent_workers=False)


def write_images(path: str | os.PathLike, images: np.ndarray | torch.Tensor) -> DiskImages:
    """Write uint8 ``N×C×H×W`` images to a new data file, one slot each (tests and tools)."""
    a = np.ascontiguousarray(images.numpy() if isinstance(images, torch.Tensor) else images)
    if a.dtype != np.uint8 or a.ndim != 4:
        raise ValueError(_("expected uint8 N×C×H×W, got {dtype} {shape}").format(dtype=a.dtype, shape=a.shape))
    Path(path).write_bytes(a.tobytes())
    return DiskImages(path, a.shape[1:], np.arange(len(a)))
