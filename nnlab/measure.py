"""Measuring a model the same way every time: parameters, MACs, size on disk, latency.

MACs come from ``torch.utils.flop_counter`` (FLOPs / 2); latency is warm-up, then repeats, median and
p90, with the thread count fixed and recorded.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
from torch.utils.flop_counter import flop_registry

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


class _MacCounter(TorchDispatchMode):
    """Counts FLOPs of the aten ops run under it, with ``torch.utils.flop_counter``'s formulas.

    Unlike ``FlopCounterMode`` it installs no module hooks: a dispatch mode lives on the calling thread's
    mode stack only, so forward passes in other threads (other sessions, other jobs) never see it.
    """

    _METADATA = None

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        kwargs = kwargs or {}
        if _MacCounter._METADATA is None:
            aten = torch.ops.aten
            _MacCounter._METADATA = {aten.is_contiguous.default, aten.is_contiguous.memory_format,
                                     aten.sym_is_contiguous.default, aten.is_strides_like_format.default,
                                     aten.is_non_overlapping_and_dense.default, aten.size.default,
                                     aten.sym_size.default, aten.stride.default, aten.sym_stride.default,
                                     aten.storage_offset.default, aten.sym_storage_offset.default,
                                     aten.numel.default, aten.sym_numel.default, aten.dim.default,
                                     torch.ops.prim.layout.default}
        if func in _MacCounter._METADATA:
            return NotImplemented
        packet = func._overloadpacket
        if packet not in flop_registry and func is not torch.ops.prim.device.default:
            with self:
                r = func.decompose(*args, **kwargs)
                if r is not NotImplemented:
                    return r
        out = func(*args, **kwargs)
        if packet in flop_registry:
            self.flops += int(flop_registry[packet](*args, **kwargs, out_val=out))
        return out


def counting_macs() -> bool:
    """True inside :func:`count_macs` on this thread (runtime wrappers then run their float model instead)."""
    return any(isinstance(m, _MacCounter) for m in _get_current_dispatch_mode_stack())


def count_macs(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """Multiply-accumulates of one forward pass on a single input of ``input_shape`` (``C, H, W``).

    Counts on a private copy of the model (the caller's model, possibly shared by every session, is not
    touched: not even its train/eval mode) with a thread-local counter (no global module hooks).
    """
    work = copy.deepcopy(model).to(device).eval()
    x = torch.zeros(1, *input_shape, device=device)
    counter = _MacCounter()
    with torch.no_grad(), counter:
        work(x)
    return counter.flops // 2


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run a block with PyTorch's intra-op thread count set to ``threads`` (None: leave as is).

    ``torch.set_num_threads`` is process-wide, so the block holds :data:`TIMING_LOCK`: no two blocks (two
    measurements, two sessions, two jobs) ever change each other's thread count halfway. Yields the count.
    """
    with TIMING_LOCK:
        old = torch.get_num_threads()
        n = int(threads or old)
        if n != old:
            torch.set_num_threads(n)
        try:
            yield n
        finally:
            if torch.get_num_threads() != old:
                torch.set_num_threads(old)


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
    with torch_threads(threads) as n:
        return _time_batches(model, input_shape, batch_sizes, warmup, repeats, n, device, dtype)


def _time_batches(model: nn.Module, input_shape: tuple[int, ...], batch_sizes: tuple[int, ...], warmup: int,
                  repeats: int, threads: int, device: torch.device | str, dtype: torch.dtype) -> dict[int, Latency]:
    out: dict[int, Latency] = {}
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, generator=torch.Generator().manual_seed(b), dtype=torch.float32).to(
            device=device, dtype=dtype)  # a fixed input from a private generator: the global RNG is not touched

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
