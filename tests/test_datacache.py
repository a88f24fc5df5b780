"""The data cache end to end: a 3,000-image folder built, killed half-way, resumed, grown and damaged.

The cached pixels are checked against PIL → ``Preprocessing.to_uint8`` on every image, and a small CNN
evaluated by streaming the cache gives exactly the logits of the same CNN on the in-memory images.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nnlab.data import cache as datacache
from nnlab.data import filelists
from nnlab.data.cache import DataCache, DataCacheError
from nnlab.data.preprocess import Preprocessing, imagenet
from nnlab.train import Cancelled

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [f"class{k}" for k in range(10)]
PRE = imagenet()  # shorter side 256, centre crop 224


def _canvas(seed: int) -> Image.Image:
    """A smooth random 1100×900 RGB picture; every image is a different window of it."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((1100, 900), Image.BICUBIC)


def write_image(path: Path, canvas: Image.Image, k: int) -> None:
    """Image ``k``: about 256 px, cut at its own offset; JPEG mostly, some PNG, greyscale and palette."""
    w, h = (256 + k % 80, 256) if k % 2 else (256, 256 + k % 80)
    x0, y0 = (k % 64) * 11, (k // 64) % 48 * 11
    im = canvas.crop((x0, y0, x0 + w, y0 + h))
    if k % 13 == 5:
        im = im.convert("L")
    if k % 9 == 4:
        (im.convert("P") if k % 27 == 4 else im).save(path.with_suffix(".png"), compress_level=1)
    else:
        im.save(path.with_suffix(".jpg"), quality=90)


def make_folder(root: Path, n: int, seed: int = 0) -> None:
    canvas = _canvas(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        write_image(root / CLASSES[k % len(CLASSES)] / f"img{k:05d}", canvas, k)


def reference_uint8(files: filelists.FileList, relpaths: list[str], pre: Preprocessing) -> torch.Tensor:
    """What a model sees in memory: PIL opens each file, ``to_uint8`` preprocesses it."""
    out = []
    for rel in relpaths:
        with Image.open(os.path.join(files.root, rel)) as im:
            out.append(pre.to_uint8(im))
    return torch.from_numpy(np.stack(out))


def small_cnn() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, len(CLASSES)))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def committed_rows(cache: DataCache) -> set[str]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{cache.path / 'index.sqlite'}?mode=ro", uri=True,
                                                timeout=5)) as conn:
            return {r[0] for r in conn.execute("SELECT relpath FROM items")}
    except sqlite3.Error:
        return set()


KILLED_BUILD = """
import sys
from nnlab.data import cache as datacache, filelists
from nnlab.data.preprocess import imagenet
files = filelists.image_folder(sys.argv[1])
datacache.DataCache(files, imagenet(), sys.argv[2]).build(workers=2, commit_seconds=0.05)
"""


def test_killed_build_resumes_then_grows_and_lists_damaged_files(tmp_path: Path) -> None:
    src, ws = tmp_path / "src", tmp_path / "ws"
    make_folder(src, 3000)
    files = filelists.image_folder(src)
    assert len(files) == 3000 and files.classes == CLASSES and files.split_names == ["all"]
    cache = DataCache(files, PRE, ws)

    # 1. build in a subprocess and SIGKILL it once about half of the images are committed
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(src), str(ws)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 180
    while len(committed_rows(cache)) < 1500:
        assert proc.poll() is None, "the build ended before it could be killed half-way"
        assert time.monotonic() < deadline, "the build made no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # its workers notice the dead parent and exit; they hold the build lock until then
    with open(cache.path / "build.lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
    committed = committed_rows(cache)
    assert 1500 <= len(committed) < 3000
    assert cache.status().pending == 3000 - len(committed)
    with pytest.raises(DataCacheError, match="not complete"):
        cache.images("all")

    # slots written but never committed are not trusted: scribble over every slot the index does not cover
    with contextlib.closing(sqlite3.connect(cache.path / "index.sqlite")) as conn:
        used = {r[0] for r in conn.execute("SELECT slot FROM items")}
    n_slots = os.path.getsize(cache.data_path) // cache.slot_bytes
    with open(cache.data_path, "r+b") as f:
        for s in sorted(set(range(n_slots)) - used):
            f.seek(s * cache.slot_bytes)
            f.write(b"\xab" * cache.slot_bytes)

    # 2. restart: only what was not committed is decoded
    stats = cache.build(workers=2)
    assert stats.resumed
    assert stats.decoded == 3000 - len(committed) and stats.reused == len(committed)
    assert set(stats.decoded_paths) == set(files.relpaths) - committed
    assert stats.unreadable == [] and cache.status().complete

    # 3. add 10 files, damage 2 (one truncated, one not an image at all); list the folder again
    canvas = _canvas(1)
    for k in range(10):
        write_image(src / CLASSES[k] / f"new{k:02d}", canvas, 2 * k + 1)  # odd k: JPEG
    jpgs = [r for r in files.relpaths if r.endswith(".jpg")]
    damaged = [jpgs[100], jpgs[2000]]
    full = (src / damaged[0]).read_bytes()
    (src / damaged[0]).write_bytes(full[: len(full) // 3])
    (src / damaged[1]).write_bytes(b"this is not an image" * 10)
    files = filelists.image_folder(src)
    cache = DataCache(files, PRE, ws)
    stats = cache.build(workers=2)
    new = sorted(r for r in files.relpaths if "/new" in r)
    assert len(new) == 10 and len(files) == 3010
    assert sorted(stats.decoded_paths) == sorted(new + damaged) and stats.decoded == 12
    assert stats.reused == 3010 - 12 and stats.removed == 0
    assert sorted(r for r, _ in stats.unreadable) == sorted(damaged)
    assert sorted(r for r, _ in cache.unreadable()) == sorted(damaged)
    assert all(why for _, why in stats.unreadable)
    status = cache.status()
    assert status.complete and status.ready == 3008 and status.unreadable == 2

    # 4. the cache holds exactly the in-memory pixels, and a CNN streamed over it gives the same logits
    x = cache.images("all")
    paths = cache.paths("all")
    assert len(x) == 3008 and tuple(x.shape[1:]) == (3, 224, 224) and not set(damaged) & set(paths)
    labels = cache.labels("all")
    assert labels.tolist() == [CLASSES.index(p.split("/")[0]) for p in paths]
    model = small_cnn()
    streamed, in_memory, seen = [], [], []
    with torch.inference_mode():
        for xb, yb, idx in cache.loader("all", batch_size=128, num_workers=2):
            ref = reference_uint8(files, [paths[i] for i in idx.tolist()], PRE)
            assert torch.equal(xb, ref)
            assert torch.equal(yb, torch.from_numpy(labels[idx.numpy()]))
            streamed.append(model(PRE.normalize(xb)))
            in_memory.append(model(PRE.normalize(ref)))
            seen += idx.tolist()
    assert seen == list(range(3008))
    assert torch.equal(torch.cat(streamed), torch.cat(in_memory))


def test_changed_and_removed_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_folder(src, 40)
    cache = datacache.build_cache(filelists.image_folder(src), PRE, tmp_path / "ws", workers=0)
    assert cache.last_build.decoded == 40
    changed = src / "class3" / "img00003.jpg"
    removed = src / "class5" / "img00005.jpg"
    write_image(changed.with_suffix(""), _canvas(7), 3)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    removed.unlink()
    files = filelists.image_folder(src)
    cache = DataCache(files, PRE, tmp_path / "ws")
    stats = cache.build(workers=1)
    assert stats.decoded_paths == ["class3/img00003.jpg"] and stats.removed == 1 and stats.reused == 38
    x, paths = cache.images("all"), cache.paths("all")
    assert "class5/img00005.jpg" not in paths and len(x) == 39
    assert torch.equal(x[:], reference_uint8(files, paths, PRE))
    # the data file does not grow without bound: the changed image took a free slot or the next one
    assert os.path.getsize(cache.data_path) <= 41 * cache.slot_bytes


def test_cancel_commits_progress_and_the_next_build_resumes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_folder(src, 200)
    files = filelists.image_folder(src)
    cache = DataCache(files, PRE, tmp_path / "ws")
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        cache.build(workers=0, cancel=cancel)
    done = cache.status().ready
    assert 0 < done < 200
    stats = cache.build(workers=0)
    assert stats.resumed and stats.decoded == 200 - done and cache.status().complete


def test_a_dying_worker_is_replaced_and_its_images_retried(tmp_path: Path) -> None:
    import psutil

    src = tmp_path / "src"
    make_folder(src, 300)
    files = filelists.image_folder(src)
    cache = DataCache(files, PRE, tmp_path / "ws")
    killed = []

    def progress(message: str, fraction: float) -> None:
        if not killed and "decoding images" in message:
            workers = [p for p in psutil.Process().children() if "nnlab.data._cacheworker" in " ".join(p.cmdline())]
            if workers:
                workers[0].kill()
                killed.append(workers[0].pid)

    stats = cache.build(workers=2, progress=progress, commit_seconds=0)
    assert killed, "no worker was found to kill"
    assert stats.unreadable == [] and stats.decoded == 300 and cache.status().complete
    assert torch.equal(cache.images("all")[::7], reference_uint8(files, cache.paths("all")[::7], PRE))


def test_two_builds_at_once_share_the_work(tmp_path: Path) -> None:
    import threading

    src = tmp_path / "src"
    make_folder(src, 120)
    files = filelists.image_folder(src)
    results: dict[int, datacache.BuildStats] = {}

    def run(k: int) -> None:
        results[k] = DataCache(files, PRE, tmp_path / "ws").build(workers=1)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s.decoded for s in results.values()) == [0, 120]


def test_decode_workers_do_not_import_torch() -> None:
    code = "import sys, nnlab.data._cacheworker; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "False"


def test_nothing_readable_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        (src / c / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataCacheError, match=r"none of the 2 images .* could be read .*a/x\.jpg"):
        datacache.build_cache(filelists.image_folder(src), PRE, tmp_path / "ws", workers=0)


def test_too_little_disk_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    make_folder(src, 12)
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(datacache.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=datacache.DISK_MARGIN + 5 * 150_528))
    with pytest.raises(DataCacheError, match=r"needs .* GiB more for 12 images"):
        datacache.build_cache(filelists.image_folder(src), PRE, tmp_path / "ws", workers=0)


def test_greyscale_arrays_are_stored_with_one_channel_and_normalise_like_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 1, 28, 28), dtype=np.uint8)
    y = np.arange(50) % 10
    files = filelists.array_source("grey", {"train": (x[:40], y[:40]), "test": (torch.from_numpy(x[40:]), y[40:])},
                                   [str(k) for k in range(10)])
    pre = Preprocessing(size=(32, 32), channels=3, resize_mode="squash", resize=36, interpolation="bicubic")
    cache = datacache.build_cache(files, pre, tmp_path / "ws", workers=1)
    assert cache.slot_shape == (1, 32, 32) and cache.last_build.decoded == 50
    xt = cache.images("test")
    assert tuple(xt.shape) == (10, 1, 32, 32) and cache.labels("test").tolist() == (y[40:]).tolist()
    # the in-memory path: a greyscale PIL image, converted to RGB by the 3-channel preprocessing
    ref = torch.stack([torch.from_numpy(pre.to_uint8(Image.fromarray(a[0]))) for a in x[40:]])
    assert ref.shape[1] == 3
    assert torch.equal(pre.normalize(xt[:]), pre.normalize(ref))
    # same arrays again: nothing decoded; one image changed: only it
    x2 = x.copy()
    x2[3, 0, 0, 0] ^= 0xFF
    again = filelists.array_source("grey", {"train": (x2[:40], y[:40]), "test": (x[40:], y[40:])},
                                   [str(k) for k in range(10)])
    stats = DataCache(again, pre, tmp_path / "ws").build(workers=0)
    assert stats.decoded_paths == ["train/3"]


def test_list_and_remove_caches(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_folder(src, 12)
    files = filelists.image_folder(src)
    small = datacache.build_cache(files, PRE.with_changes(size=(32, 32), resize=36), tmp_path / "ws", workers=0)
    big = datacache.build_cache(files, PRE, tmp_path / "ws", workers=0)
    listed = datacache.list_caches(tmp_path / "ws")
    assert [c["key"] for c in listed] == [big.key, small.key]  # largest first
    assert listed[0]["images"] == 12 and listed[0]["source"] == str(src.resolve())
    assert listed[0]["bytes"] >= 12 * big.slot_bytes and listed[0]["preprocessing"]["size"] == [224, 224]
    with open(big.path / "build.lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(DataCacheError, match="being built"):
            datacache.remove_cache(big.path)
    datacache.remove_cache(big.path)
    assert not big.path.exists() and [c["key"] for c in datacache.list_caches(tmp_path / "ws")] == [small.key]
    assert big.status().pending == 12
