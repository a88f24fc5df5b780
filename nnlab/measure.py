"""Measuring a model the same way every time: parameters, MACs, size on disk, latency.

MACs come from ``torch.utils.flop_counter`` (FLOPs / 2); latency is warm-up, then repeats, median and
p90, with the thread count fixed and recorded.
"""

from __future__ import annotations

import gzip
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# torch.set_num_threads is process-wide: timed sections take this lock so that two concurrent measurements
# (two browser sessions, two background jobs) never change each other's thread count mid-measurement.
TIMING_LOCK = threading.RLock()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, nonzero)`` parameter counts (masks made permanent count as zeros)."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


def count_macs(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """Multiply-accumulates of one forward pass on a single input of ``input_shape`` (``C, H, W``)."""
    x = torch.zeros(1, *input_shape, device=device)
    was = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    model.train(was)
    return int(counter.get_total_flops() // 2)


def file_sizes(path: str | Path) -> tuple[int, int]:
    """``(bytes on disk, gzip -9 bytes)`` of a file."""
    data = Path(path).read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0))


@dataclass
class Latency:
    """Latency of one batch size, in milliseconds."""

    batch: int
    median_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    threads: int
    runtime: str

    def to_dict(self) -> dict:
        return asdict(self)


def time_call(fn: Callable[[], object], warmup: int = 3, repeats: int = 20, min_seconds: float = 0.0) -> list[float]:
    """Wall times in ms of ``fn()`` after ``warmup`` calls; at least ``repeats`` runs (and ``min_seconds``)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
        if len(times) >= 10 * repeats:
            break
    return times


def summarize(times: list[float], batch: int, threads: int, runtime: str) -> Latency:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return Latency(batch, statistics.median(ordered), p90, ordered[0], len(ordered), threads, runtime)


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch_sizes: tuple[int, ...] = (1, 32),
                    warmup: int = 3, repeats: int = 20, threads: int | None = None,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[int, Latency]:
    """Latency of ``model`` in eager PyTorch at each batch size, threads fixed for the measurement."""
    model.eval()
    with TIMING_LOCK:
        old_threads = torch.get_num_threads()
        threads = threads or old_threads
        torch.set_num_threads(threads)
        try:
            out = _time_batches(model, input_shape, batch_sizes, warmup, repeats, threads, device, dtype)
        finally:
            torch.set_num_threads(old_threads)
    return out


def _time_batches(model: nn.Module, input_shape: tuple[int, ...], batch_sizes: tuple[int, ...], warmup: int,
                  repeats: int, threads: int, device: torch.device | str, dtype: torch.dtype) -> dict[int, Latency]:
    out: dict[int, Latency] = {}
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, device=device, dtype=dtype)

        def run() -> None:
            with torch.inference_mode():
                model(x)
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()

        reps = repeats if b == 1 else max(5, repeats // 2)
        out[b] = summarize(time_call(run, warmup, reps), b, threads, f"pytorch-eager-{device}")
    return out


def layer_table(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """One row per leaf module: name, type, output shape, parameters, nonzero parameters."""
    rows: list[dict] = []
    handles = []

    def hook(name: str) -> Callable:
        def fn(mod: nn.Module, inp: tuple, out: object) -> None:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            nz = sum(int(torch.count_nonzero(p.detach())) for p in mod.parameters(recurse=False))
            rows.append({"layer": name, "type": type(mod).__name__,
                         "output_shape": str(shape[1:]) if shape else "", "params": params, "nonzero": nz})
        return fn

    try:
        for name, mod in model.named_modules():
            if name and not list(mod.children()):
                handles.append(mod.register_forward_hook(hook(name)))
        was = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return rows
