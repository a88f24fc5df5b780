"""Benchmark: a generated JPEG folder decoded into the data cache at 224, then ResNet-18 streamed over it.

Steps, each timed with the peak memory growth of this process and all its children (decode workers,
DataLoader readers) sampled ten times a second with psutil:

1. generate ``--images`` JPEGs of about 256 px in 10 class folders (not timed);
2. list the folder and build the cache (ImageNet preprocessing: shorter side 256, centre crop 224) with
   ``--workers`` decode processes — images/s and peak memory growth (goal ≤ 1.5 GB);
3. build again with nothing changed (what a restart costs);
4. ResNet-18 (random weights, eager PyTorch, ``--threads`` threads) over the cache through the streaming
   loader, logits written to a per-sample results store — images/s and peak memory growth (goal ≤ 1.5 GB);
5. the same ResNet-18 on one batch held in memory, repeated: the compute-only rate, to show what streaming
   costs.

Memory is reported two ways: the sum of RSS (pages shared between processes are counted in each, so
forked DataLoader readers count the parent's libraries again) and the sum of PSS (shared pages split among
the processes sharing them: what the processes really add). The goal is checked on PSS.

Run: ``python bench/bench_datacache.py [--images 50000] [--workers 2] [--threads 2] [--eval-images 0]
[--cpus 0,1] [--dir PATH] [--keep]``. ``--eval-images 0`` evaluates every image; ``--cpus`` pins the run
(children included) to those cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL = 1.5 * 2**30
CLASSES = 10


# --- data --------------------------------------------------------------------------------------------------

_CANVAS: dict[int, object] = {}


def _write(args: tuple[str, int]) -> int:
    """Image ``k``: a window of a smooth random canvas of its class, about 256 px, saved as JPEG."""
    from PIL import Image

    folder, k = args
    c = k % CLASSES
    if c not in _CANVAS:
        rng = np.random.default_rng(c)
        _CANVAS[c] = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).resize((1400, 1400),
                                                                                               Image.BICUBIC)
    w, h = (256 + k % 97, 256) if k % 2 else (256, 256 + k % 89)
    x0, y0 = (k * 37) % (1400 - w), (k * 101 // 7) % (1400 - h)
    path = Path(folder) / f"class{c}" / f"{k:06d}.jpg"
    _CANVAS[c].crop((x0, y0, x0 + w, y0 + h)).save(path, quality=90)
    return path.stat().st_size


def generate(folder: Path, n: int, processes: int) -> int:
    """Write ``n`` JPEGs (skipped when the folder already holds them); returns the bytes on disk."""
    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    have = sum(1 for _ in folder.rglob("*.jpg"))
    if have == n:
        return sum(p.stat().st_size for p in folder.rglob("*.jpg"))
    with get_context("spawn").Pool(processes) as pool:
        return sum(pool.imap_unordered(_write, ((str(folder), k) for k in range(n)), chunksize=256))


# --- memory ------------------------------------------------------------------------------------------------

class PeakMemory:
    """Samples RSS and PSS of this process and its children in a thread; ``peak_*`` are growths in bytes."""

    def __init__(self, interval: float = 0.1) -> None:
        self.me = psutil.Process()
        self.interval = interval
        self.base_rss = self.base_pss = 0
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()

    def _sample(self) -> tuple[int, int]:
        rss = pss = 0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                m = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += m.rss
            pss += getattr(m, "pss", m.rss)
        return rss, pss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = self._sample()
            self.peak_rss = max(self.peak_rss, rss - self.base_rss)
            self.peak_pss = max(self.peak_pss, pss - self.base_pss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.base_rss, self.base_pss = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        rss, pss = self._sample()
        self.peak_rss = max(self.peak_rss, rss - self.base_rss)
        self.peak_pss = max(self.peak_pss, pss - self.base_pss)


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


# --- the benchmark -----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2, help="decode processes")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the evaluation")
    ap.add_argument("--loader-workers", type=int, default=1, help="DataLoader reader processes")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-images", type=int, default=0, help="images evaluated (0: all)")
    ap.add_argument("--cpus", default="", help="pin to these cores, e.g. 0,1")
    ap.add_argument("--dir", default="", help="work folder, kept (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    import torch
    import torchvision

    from nnlab.data import cache as datacache
    from nnlab.data import filelists
    from nnlab.data.preprocess import imagenet

    torch.set_num_threads(args.threads)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="nnlab-bench-datacache-"))
    src, ws = work / "jpegs", work / "workspace"
    rows: list[tuple[str, int, float, PeakMemory | None, str]] = []
    try:
        t0 = time.perf_counter()
        jpeg_bytes = generate(src, args.images, max(1, len(os.sched_getaffinity(0))))
        gen_s = time.perf_counter() - t0
        shutil.rmtree(ws, ignore_errors=True)
        pre = imagenet()

        t0 = time.perf_counter()
        files = filelists.image_folder(src)
        rows.append(("list the folder (scan + stat)", len(files), time.perf_counter() - t0, None, ""))

        cache = datacache.DataCache(files, pre, ws)
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            stats = cache.build(workers=args.workers)
            build_s = time.perf_counter() - t0
        assert stats.decoded == len(files) and not stats.unreadable, stats.summary()
        rows.append((f"build the cache ({args.workers} decode workers)", len(files), build_s, mem, "build"))

        with PeakMemory() as mem:
            t0 = time.perf_counter()
            again = datacache.DataCache(filelists.image_folder(src), pre, ws).build(workers=args.workers)
            rows.append(("list + build again, nothing changed", len(files), time.perf_counter() - t0, mem, ""))
        assert again.decoded == 0

        torch.manual_seed(0)  # a benchmark: random weights, seeded
        model = torchvision.models.resnet18(weights=None).eval()
        n_eval = args.eval_images or len(files)
        order = np.arange(min(n_eval, len(files)))
        x_first = cache.images("all")[order[:args.batch]]
        with torch.inference_mode():
            model(pre.normalize(x_first))  # warm-up
        (work / "results").mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(work / "results" / "logits.npy", "w+", np.float32, (len(order), 1000))
        with PeakMemory() as mem, torch.inference_mode():
            t0 = time.perf_counter()
            done = 0
            for xb, _, _ in cache.loader("all", batch_size=args.batch, order=order, num_workers=args.loader_workers):
                out[done:done + len(xb)] = model(pre.normalize(xb)).numpy()
                done += len(xb)
            out.flush()
            eval_s = time.perf_counter() - t0
        rows.append((f"ResNet-18 over the cache, streamed (batch {args.batch}, {args.loader_workers} reader "
                     f"process{'es' if args.loader_workers != 1 else ''}, logits stored)", len(order), eval_s, mem,
                     "eval"))

        reps = max(1, min(10, len(order) // args.batch))
        with torch.inference_mode():
            xn = pre.normalize(x_first)
            t0 = time.perf_counter()
            for _ in range(reps):
                model(xn)
            rows.append(("ResNet-18 on one in-memory batch, repeated (compute only)", reps * len(xn),
                         time.perf_counter() - t0, None, ""))

        cache_bytes = os.path.getsize(cache.data_path)
        print(f"{len(files):,} generated JPEGs (about 256 px, 10 classes, {jpeg_bytes / 2**20:,.0f} MB; generated "
              f"in {gen_s:.0f} s, not timed) → data cache at 224 (ImageNet preprocessing: shorter side 256, centre "
              f"crop 224; {cache_bytes / 2**30:.2f} GiB on disk). CPU: {os.cpu_count()} cores visible"
              f"{', pinned to ' + args.cpus if args.cpus else ''}; {args.workers} decode workers; "
              f"{args.threads} torch threads for ResNet-18 (random weights, eager PyTorch).\n")
        print("| step | images | s | images/s | peak memory growth, PSS sum | RSS sum | goal ≤ 1.5 GB |")
        print("|---|---:|---:|---:|---:|---:|:-:|")
        for name, n, s, m, goal in rows:
            pss, rss = (mb(m.peak_pss), mb(m.peak_rss)) if m else ("", "")
            verdict = ("OK" if m.peak_pss <= GOAL else "ABOVE GOAL") if goal and m else ""
            print(f"| {name} | {n:,} | {s:.1f} | {n / s:,.0f} | {pss} | {rss} | {verdict} |")
        print("\nMemory: this process plus its children (decode workers, DataLoader readers), peak minus the value "
              "before the step. RSS counts pages shared between processes once per process; PSS splits them.")
    finally:
        if not args.keep and not args.dir:  # a folder given by --dir is kept (its JPEGs are reused next time)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
