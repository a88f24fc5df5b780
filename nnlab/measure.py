"""THE measurement path: every model and variant is timed, sized and counted here, one way.

- Latency: one harness (:func:`interleaved_latency`): warm-up, then round-robin rounds over every runner being
  compared on the same input, a pause before each turn, median and p90, the thread count fixed and recorded,
  the whole measurement under :data:`nnlab.threads.TIMING_LOCK`. One repeat policy (:func:`calls_per_round`,
  :data:`ROUNDS`). Every :class:`Latency` states runtime, precision, threads, batch and :data:`HARNESS`.
- The base in every runtime (:func:`fp32_latencies`) and a variant against its base in the variant's runtime,
  in the same interleaved run (:func:`against_base`); :func:`speedups` turns those into the two ratios shown.
- Size: artifact bytes, gzip -9 bytes, dense fp32 bytes (:func:`artifact_sizes`, :func:`dense_fp32_bytes`,
  :func:`state_sizes` for a model held only as weights).
- MACs from ``torch.utils.flop_counter`` (FLOPs / 2) on a private copy; parameters and nonzero parameters.
- Accuracy: the one pass over a split is :func:`nnlab.evaluate.predict_logits` (eager or any runner).
"""

from __future__ import annotations

import copy
import gzip
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save
from torch import nn
from torch.utils._python_dispatch import (
    TorchDispatchMode,
    _get_current_dispatch_mode_stack,
)
from torch.utils.flop_counter import flop_registry

from nnlab.i18n import _, num
from nnlab.runtimes.base import Runner, artifact_files, as_input, torch_logits
from nnlab.runtimes.candidates import (
    available_fp32,
    fidelity_check,
    fp32_factories,
    precision_of,
    same_runtime_factory,
)
from nnlab.runtimes.torch_eager import TorchRunner
from nnlab.threads import TIMING_LOCK

# The version of the timing harness, stored with every latency: records timed by another harness (or none)
# are not compared with these (:func:`comparable`) until they are measured again.
HARNESS = "interleaved-2"
BATCHES = (1, 32)
ROUNDS = 5
WARMUP = 2
SETTLE_S = 0.02



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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
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


def file_sizes(path: str | Path) -> tuple[int, int]:
    """``(bytes on disk, gzip -9 bytes)`` of a file."""
    data = Path(path).read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0))


def artifact_sizes(path: str | Path) -> tuple[int, int]:
    """``(bytes on disk, gzip -9 bytes)`` summed over every file of the artifact (an OpenVINO IR: .xml + .bin)."""
    size = gz = 0
    for f in artifact_files(path):
        s, g = file_sizes(f)
        size, gz = size + s, gz + g
    return size, gz


def _state_bytes(model: nn.Module, dense_fp32: bool) -> bytes:
    state = {k: ((v.float() if dense_fp32 and v.is_floating_point() else v).detach().cpu().contiguous())
             for k, v in model.state_dict().items()}
    return st_save(state) if state else b""


def dense_fp32_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict stored dense as fp32 safetensors (the comparison size)."""
    return len(_state_bytes(model, True))


def state_sizes(model: nn.Module) -> tuple[int, int]:
    """``(bytes, gzip -9 bytes)`` of the model's weights as safetensors: the size of a model stored that way."""
    data = _state_bytes(model, False)
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0)) if data else 0


# --- latency: the one harness --------------------------------------------------------------------------

@dataclass
class Latency:
    """Latency of one batch size in one runtime, in milliseconds, and how it was measured."""

    batch: int
    median_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    threads: int
    runtime: str
    precision: str = ""
    harness: str = HARNESS
    rounds: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def calls_per_round(batch: int) -> int:
    """The repeat policy: timed calls per runner and round (3 for small batches, 1 for large ones)."""
    return 3 if batch <= 4 else 1


def rounds_for(repeats: int | None) -> int:
    """Rounds giving about ``repeats`` timed calls per runtime at batch 1, at least 2.

    None: :data:`ROUNDS`, or ``NNLAB_LATENCY_ROUNDS`` where set. The test suite sets 2: it checks that every
    figure is measured and stated, not how fast anything is (speed lives in bench/, at the default)."""
    if not repeats:
        return max(2, int(os.environ.get("NNLAB_LATENCY_ROUNDS") or ROUNDS))
    return max(2, math.ceil(int(repeats) / calls_per_round(1)))


def summarize(times: list[float], batch: int, threads: int, runtime: str, rounds: int = 0) -> Latency:
    """Median, p90 and minimum of wall times in ms."""
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return Latency(batch, statistics.median(ordered), p90, ordered[0], len(ordered), threads, runtime,
                   precision_of(runtime), HARNESS, rounds)


def interleaved_latency(runners: Mapping[str, Runner], x: np.ndarray | torch.Tensor, rounds: int = ROUNDS,
                        per_round: int | None = None, warmup: int = WARMUP,
                        settle_s: float = SETTLE_S) -> dict[str, Latency]:
    """Time every runner on the same input, round-robin, and summarise each (medians over all calls).

    Each round times every runner ``per_round`` times (default :func:`calls_per_round`), so load drifts on a
    shared machine hit all of them alike. Before each runner's turn the thread sleeps ``settle_s`` seconds, so
    threads the runner before left busy (ONNX Runtime's spinning intra-op threads, OpenVINO's TBB workers) do
    not take the cores of the next one; nnlab's own ONNX Runtime sessions stop spinning when a call returns,
    and 20 ms is then enough (a runner that keeps spinning needs about 100 ms). The whole measurement holds
    :data:`nnlab.threads.TIMING_LOCK`: no other measurement runs in between or changes a thread count
    halfway. A runner with a ``prepare(shape)`` method is prepared for the input's shape before its warm-up,
    so what is timed is how it runs that shape from then on.
    """
    x = as_input(x)
    per_round = per_round or calls_per_round(len(x))
    times: dict[str, list[float]] = {k: [] for k in runners}
    with TIMING_LOCK:
        for r in runners.values():
            prepare = getattr(r, "prepare", None)  # e.g. OpenVINO compiles this input shape statically
            if prepare is not None:
                prepare(x.shape)
            for _ in range(warmup):
                r.predict_logits(x)
        for _ in range(rounds):
            for name, r in runners.items():
                time.sleep(settle_s)
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    r.predict_logits(x)
                    times[name].append((time.perf_counter() - t0) * 1000.0)
    return {k: summarize(v, len(x), int(getattr(runners[k], "threads", 0) or torch.get_num_threads()),
                         str(getattr(runners[k], "runtime", k)), rounds) for k, v in times.items()}


def latency_table(runners: Mapping[str, Runner], input_shape: tuple[int, ...], batches: tuple[int, ...] = BATCHES,
                  rounds: int = ROUNDS, seed: int = 0) -> dict[str, dict[int, Latency]]:
    """Every runner at every batch size: one interleaved run per batch size, all runners on the same input."""
    out: dict[str, dict[int, Latency]] = {k: {} for k in runners}
    for b in batches:
        x = np.random.default_rng(seed + b).standard_normal((b, *input_shape)).astype(np.float32)
        for k, lat in interleaved_latency(runners, x, rounds).items():
            out[k][b] = lat
    return out


def runner_latency(runner: Runner, input_shape: tuple[int, ...], batches: tuple[int, ...] = BATCHES,
                   rounds: int = ROUNDS) -> dict[int, Latency]:
    """Latency of one runner at each batch size (the same harness, a field of one)."""
    return latency_table({"r": runner}, input_shape, batches, rounds)["r"]


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch_sizes: tuple[int, ...] = BATCHES,
                    threads: int | None = None, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, rounds: int = ROUNDS) -> dict[int, Latency]:
    """Latency of ``model`` in eager PyTorch at each batch size (the model is put in eval mode)."""
    prec = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    dev = torch.device(device).type
    runner = TorchRunner(model, threads, f"pytorch-eager-{prec}-{dev}", dtype, dev)
    return runner_latency(runner, input_shape, batch_sizes, rounds)


def latency_dicts(lat: Mapping[int, Latency]) -> dict[str, dict]:
    """``{"1": {...}, "32": {...}}``: how records store latencies."""
    return {str(b): v.to_dict() for b, v in lat.items()}


@dataclass
class RuntimeTable:
    """A float model in every runtime available here, timed in one interleaved run per batch size.

    Attributes:
        latencies: Runtime name → batch (as a string) → :class:`Latency` dict.
        figures: One dict per candidate: ``name``, ``runtime``, ``status`` ("ok", "rejected", "failed"),
            ``note`` and the fidelity facts (``top1_agreement``, ``max_abs_diff`` against eager PyTorch).
        runners: The verified runners by runtime name (not stored).
    """

    latencies: dict[str, dict[str, dict]]
    figures: list[dict] = field(default_factory=list)
    runners: dict[str, Runner] = field(default_factory=dict, repr=False)

    def fastest(self, batch: int = 1) -> str:
        """The runtime with the smallest median at ``batch``."""
        return _fastest(self.latencies, batch)[0]

    def fastest_latency(self) -> dict[str, dict]:
        """Per batch size, the fastest runtime's latency dict: what a base record shows as its ``latency``."""
        batches = sorted({b for by_batch in self.latencies.values() for b in by_batch}, key=int)
        return {b: self.latencies[self.fastest(int(b))][b] for b in batches}


def _fastest(latencies: Mapping[str, Mapping[str, dict]], batch: int) -> tuple[str, float]:
    best = ("", float("nan"))
    for rt, by_batch in latencies.items():
        lat = by_batch.get(str(batch))
        if lat and (not math.isfinite(best[1]) or lat["median_ms"] < best[1]):
            best = (rt, float(lat["median_ms"]))
    return best


def fp32_latencies(model: nn.Module, input_shape: tuple[int, ...], threads: int | None = None,
                   batches: tuple[int, ...] = BATCHES, rounds: int = ROUNDS, probe: np.ndarray | None = None,
                   names: tuple[str, ...] | None = None, tolerance: float = 1e-3) -> RuntimeTable:
    """The base in every runtime: fp32 eager PyTorch, ONNX Runtime and OpenVINO (CUDA when present).

    Each runtime is built from a private copy of ``model`` (not changed), checked against eager PyTorch on
    ``probe`` (top-1 agreement 100 %, max logit difference ≤ ``tolerance``), and the verified ones are timed
    together by :func:`latency_table`. A runtime that fails or is rejected is listed with the reason.
    """
    threads = int(threads or torch.get_num_threads())
    ref_model = copy.deepcopy(model).cpu().eval()
    if probe is None:
        probe = np.random.default_rng(0).standard_normal((4, *input_shape)).astype(np.float32)
    check = fidelity_check(torch_logits(ref_model, probe), as_input(probe), ref_model, tolerance)
    built: dict[str, Runner] = {}
    figures: list[dict] = []
    for name, factory in fp32_factories(ref_model, input_shape, threads, names or available_fp32()).items():
        fig: dict[str, Any] = {"name": name, "runtime": "", "status": "ok", "note": ""}
        figures.append(fig)
        try:
            runner = factory()
            fig["runtime"] = runner.runtime
            ok, facts = check(name, runner)
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot take this model is listed, with why
            fig.update(status="failed", note=f"{type(exc).__name__}: {str(exc)[:200]}")
            continue
        fig.update(facts)
        if not ok:
            fig["status"] = "rejected"
            continue
        built[runner.runtime] = runner
    table = latency_table(built, input_shape, batches, rounds)
    return RuntimeTable({rt: latency_dicts(lat) for rt, lat in table.items()}, figures, built)


def against_base(runner: Runner, base: nn.Module, input_shape: tuple[int, ...],
                 batches: tuple[int, ...] = BATCHES, rounds: int = ROUNDS) -> tuple[dict[int, Latency], dict]:
    """Time a variant's runner and its float base in the variant's runtime, in the same interleaved run.

    Returns:
        ``(variant latencies by batch, baseline)``; the baseline is ``{"runtime", "latency": {batch: dict}}``
        (the base as fp32 in the engine that runs the variant, same threads), or ``{"runtime": "", "note": why}``
        when the base cannot run there (the variant is then timed alone).
    """
    try:
        _, factory = same_runtime_factory(runner.runtime, copy.deepcopy(base).cpu().eval(), input_shape,
                                          int(runner.threads))
        base_runner = factory()
    except Exception as exc:  # noqa: BLE001 - no same-runtime base: the variant alone, and why
        return runner_latency(runner, input_shape, batches, rounds), {
            "runtime": "", "note": f"the base could not run in {runner.runtime}: {type(exc).__name__}: {exc}"[:300]}
    table = latency_table({"variant": runner, "base": base_runner}, input_shape, batches, rounds)
    return table["variant"], {"runtime": base_runner.runtime, "latency": latency_dicts(table["base"])}


# --- comparing two records ------------------------------------------------------------------------------

def comparable(record: Any) -> bool:
    """True when every latency of the record was measured by this :data:`HARNESS` (and a variant's base was
    timed beside it, a base model in every runtime)."""
    lats = list((record.latency or {}).values())
    if not lats or any(lat.get("harness") != HARNESS for lat in lats):
        return False
    if record.parent:
        return bool((record.baseline or {}).get("runtime") or (record.baseline or {}).get("note"))
    return bool(record.latencies)


def runtime_rows(base: Any) -> list[dict]:
    """One row per runtime the base was timed in: median and p90 at each batch size, threads, fastest first.

    A table for reading: its column names and numbers are in the current language."""
    lats = base.latencies or {}
    rows = []
    for rt in sorted(lats, key=lambda k: float((lats[k].get("1") or {}).get("median_ms", float("inf")))):
        row: dict[str, Any] = {_("runtime"): rt}
        for b, lat in sorted(lats[rt].items(), key=lambda kv: int(kv[0])):
            row[_("batch {batch} (ms)").format(batch=b)] = f"{num(lat['median_ms'])} ({num(lat['p90_ms'])})"
            row[_("threads")] = lat.get("threads")
        rows.append(row)
    return rows


def fastest_fp32(base: Any, batch: int = 1) -> tuple[str, float]:
    """``(runtime, median ms)`` of the base's fastest fp32 runtime at ``batch`` (``("", nan)`` if unknown)."""
    return _fastest(base.latencies or {}, batch)


def speedups(record: Any, base: Any | None = None, batch: int = 1) -> dict[str, Any]:
    """The two speed-ups of a record (base latency ÷ its latency; > 1 is faster).

    ``same_runtime``: against the base in the record's own runtime, both timed in one interleaved run
    (a base record: 1). ``vs_fastest_fp32``: against the base's fastest fp32 runtime (a separate run of the
    same harness; labelled as such wherever shown). NaN where a number is missing or not comparable.
    """
    own = record.latency.get(str(batch)) or {}
    ms = float(own.get("median_ms", float("nan")))
    out: dict[str, Any] = {"runtime": own.get("runtime", ""), "same_runtime": float("nan"), "same_runtime_base": "",
                           "vs_fastest_fp32": float("nan"), "fastest_fp32_runtime": ""}
    if not comparable(record) or not (ms > 0):
        return out
    if not record.parent:
        out.update(same_runtime=1.0, same_runtime_base=own.get("runtime", ""))
    else:
        bl = ((record.baseline or {}).get("latency") or {}).get(str(batch)) or {}
        if bl.get("median_ms"):
            out.update(same_runtime=float(bl["median_ms"]) / ms, same_runtime_base=record.baseline.get("runtime", ""))
    ref = base if base is not None else (record if not record.parent else None)
    if ref is not None and comparable(ref):
        rt, fast = fastest_fp32(ref, batch)
        if math.isfinite(fast):
            out.update(vs_fastest_fp32=fast / ms, fastest_fp32_runtime=rt)
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
