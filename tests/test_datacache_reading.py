"""Reading the cache: DiskImages indexing, streaming batches in a given order, flat RSS, per-sample results."""

from __future__ import annotations

import gc
import pickle
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from nnlab.data.diskimages import DiskImages, batch_loader, write_images


@pytest.fixture()
def shuffled(tmp_path: Path) -> tuple[DiskImages, np.ndarray]:
    """20 images of 2×3×4 whose slots are a permutation: image i is ``ref[i]``."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (20, 2, 3, 4), dtype=np.uint8)
    slots = rng.permutation(20)
    data = np.empty_like(ref)
    data[slots] = ref
    (tmp_path / "d.u8").write_bytes(data.tobytes())
    return DiskImages(tmp_path / "d.u8", (2, 3, 4), slots), ref


def test_indexing_like_a_tensor(shuffled) -> None:
    x, ref = shuffled
    t = torch.from_numpy(ref)
    assert len(x) == 20 and x.shape == torch.Size([20, 2, 3, 4]) and x.dtype == torch.uint8 and x.ndim == 4
    assert torch.equal(x[3], t[3]) and torch.equal(x[-1], t[-1])
    for key in (slice(None), slice(2, 17, 3), slice(None, None, -1), [5, 5, 0, 19], np.array([7, 1]),
                torch.tensor([4, 2, 9]), torch.arange(20) % 3 == 0, np.arange(20) > 15, []):
        np_key = key if isinstance(key, slice) else np.asarray(key, dtype=None if len(key) else np.int64)
        want = torch.from_numpy(np.ascontiguousarray(ref[np_key]))  # numpy semantics (negative steps too)
        assert torch.equal(x[key], want), key
    assert x[[]].shape == (0, 2, 3, 4)
    with pytest.raises(IndexError):
        x[20]
    with pytest.raises(IndexError):
        x[[0, -21]]
    with pytest.raises(IndexError):
        x[np.ones(3, bool)]
    assert torch.equal(torch.stack(list(x)), t)  # iteration stops at the end
    sub = x.subset([19, 0, 7])
    assert torch.equal(sub[:], t[[19, 0, 7]]) and torch.equal(sub.subset(slice(1, None))[:], t[[0, 7]])
    copy = pickle.loads(pickle.dumps(x))
    assert copy._fd is None and torch.equal(copy[:], t)


def test_a_truncated_file_is_an_error_not_garbage(tmp_path: Path) -> None:
    x = write_images(tmp_path / "d.u8", np.ones((4, 1, 2, 2), np.uint8))
    with open(x.path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(OSError, match="truncated"):
        x[3]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_follow_the_order_with_labels(shuffled, workers: int) -> None:
    x, ref = shuffled
    labels = np.arange(20) * 10
    order = torch.randperm(20, generator=torch.Generator().manual_seed(3)).numpy()[:17]
    batches = list(batch_loader(x, labels, order=order, batch_size=5, num_workers=workers))
    assert [len(b[0]) for b in batches] == [5, 5, 5, 2]
    xs, ys, idx = (torch.cat([b[k] for b in batches]) for k in range(3))
    assert idx.tolist() == order.tolist()
    assert torch.equal(xs, torch.from_numpy(ref[order])) and ys.tolist() == (labels[order]).tolist()
    (_, y_none, _), = list(batch_loader(x, None, order=[1, 2], batch_size=8, num_workers=workers))
    assert y_none.tolist() == [-1, -1]
    with pytest.raises(IndexError):
        batch_loader(x, labels, order=[20])


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_rss_stays_flat_while_reading_a_larger_cache(tmp_path: Path) -> None:
    """128 MB of slots read three ways: DiskImages, a DataLoader over it, and np.memmap as the referee."""
    n, shape = 4200, (3, 80, 128)  # 30,720 bytes a slot, 129 MB in all; batches of 64 are 2 MB
    path = tmp_path / "big.u8"
    with open(path, "wb") as f:
        for start in range(0, n, 200):
            k = np.arange(start, min(n, start + 200))
            f.write(np.broadcast_to((k % 251).astype(np.uint8)[:, None, None, None], (len(k), *shape)).tobytes())
    x = DiskImages(path, shape, np.arange(n))
    x[np.arange(64)]  # warm up allocator and file descriptor
    for _ in batch_loader(x, order=np.arange(128), batch_size=64, num_workers=2):
        pass

    base = _rss()
    peak = 0
    for start in range(0, n, 64):
        b = x[start:start + 64]
        assert int(b[-1, 0, 0, 0]) == (start + len(b) - 1) % 251
        peak = max(peak, psutil.Process().memory_info().rss - base)
    del b
    assert peak < 16 * 2**20, f"DiskImages grew RSS by {peak / 2**20:.0f} MB"

    base = _rss()
    peak, seen = 0, 0
    for xb, _, idx in batch_loader(x, order=np.arange(n), batch_size=64, num_workers=2):
        assert torch.equal(xb[:, 0, 0, 0], (idx % 251).to(torch.uint8))
        seen += len(idx)
        peak = max(peak, psutil.Process().memory_info().rss - base)
    del xb
    assert seen == n and peak < 40 * 2**20, f"the loader grew RSS by {peak / 2**20:.0f} MB"

    # the referee: walking a memmap of the same file keeps every page it touched in RSS
    base = _rss()
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, *shape))
    total = sum(int(mm[s:s + 64].sum(dtype=np.int64) > 0) for s in range(0, n, 64))
    grown = psutil.Process().memory_info().rss - base
    del mm
    assert total > 0 and grown > 0.7 * n * x.slot_bytes, f"memmap grew RSS by only {grown / 2**20:.0f} MB"
