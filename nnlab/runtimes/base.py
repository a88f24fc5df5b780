"""The Runner protocol: one way to execute a model outside (or inside) eager PyTorch, and how to check one.

A runner is anything with ``runtime`` (a name such as "openvino-int8-cpu"), ``threads`` (the intra-op
thread count it was built with, fixed for its life) and ``predict_logits(x)`` taking normalised float32
``N×C×H×W`` inputs and returning ``N×K`` logits as a numpy array. Everything that evaluates, calibrates or
times a model goes through a runner, so the figures always come from the runtime that executes it.

This module also holds the helpers every runtime shares: fidelity against eager PyTorch
(:func:`agreement`), interleaved timing (:func:`interleaved_latency`), file sizes of multi-file artifacts,
and the CPU's SIMD width (channel counts that are multiples of it suit the kernels).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from nnlab.measure import TIMING_LOCK, Latency, file_sizes, summarize


@runtime_checkable
class Runner(Protocol):
    """A model executed by some runtime on the CPU with a fixed thread count."""

    runtime: str
    threads: int

    def predict_logits(self, x: np.ndarray) -> np.ndarray: ...


def as_input(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy batch from a numpy array or a tensor (any device)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax is the same in both logit arrays."""
    return float((np.asarray(a).argmax(1) == np.asarray(b).argmax(1)).mean())


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(Σ ref² / Σ (ref − test)²)`` in dB (inf when equal)."""
    ref = np.asarray(reference, np.float64)
    noise = float(((ref - np.asarray(test, np.float64)) ** 2).sum())
    signal = float((ref**2).sum())
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))


def torch_logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Eager PyTorch logits of ``model`` (never switched to eval mode here: pass an eval-mode model)."""
    t = torch.as_tensor(as_input(x))
    with torch.inference_mode():
        outs = [model(t[i:i + batch_size]).float().cpu().numpy() for i in range(0, len(t), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def agreement(runner: Runner, model: nn.Module, x: np.ndarray | torch.Tensor,
              reference: np.ndarray | None = None) -> tuple[float, float]:
    """How closely ``runner`` reproduces eager PyTorch on ``x``.

    Args:
        runner: The runner to check.
        model: The float PyTorch model it was built from (in eval mode; it is not changed).
        x: A probe batch of normalised inputs.
        reference: PyTorch's logits for ``x`` when already computed.

    Returns:
        ``(top1_agreement, max_abs_logit_diff)``.
    """
    ref = torch_logits(model, x) if reference is None else np.asarray(reference, np.float32)
    out = np.asarray(runner.predict_logits(as_input(x)), np.float32)
    if out.shape != ref.shape:
        return 0.0, float("inf")
    return top1_agreement(ref, out), float(np.abs(ref - out).max()) if out.size else 0.0


def interleaved_latency(runners: dict[str, Runner], x: np.ndarray, rounds: int = 5, per_round: int = 3,
                        warmup: int = 2, settle_s: float = 0.02) -> dict[str, Latency]:
    """Time every runner on the same input, round-robin, and summarise each (medians over all calls).

    Each round times every runner ``per_round`` times, so load drifts on a shared machine hit all of them
    alike. Before each runner's turn the thread sleeps ``settle_s`` seconds, so threads the runner before
    left busy (ONNX Runtime's spinning intra-op threads, OpenVINO's TBB workers) do not take the cores of the
    next one. nnlab's own ONNX Runtime sessions stop spinning when a call returns, and 20 ms is then enough;
    timing a runner that keeps spinning (ONNX Runtime with its defaults, 2 threads on 2 cores) needs about
    100 ms: with 20 ms, OpenVINO int8 right after it measured 9.2 ms against 5.2 ms alone. The whole
    measurement holds :data:`nnlab.measure.TIMING_LOCK`: no other measurement (another session, another
    job) runs in between or changes a thread count halfway. A runner with a ``prepare(shape)`` method is
    prepared for the input's shape before its warm-up, so what is timed is how it runs that shape from then on.
    """
    import time

    x = as_input(x)
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
    return {k: summarize(v, len(x), int(runners[k].threads), runners[k].runtime) for k, v in times.items()}


def runner_latency(runner: Runner, input_shape: tuple[int, ...], batch_sizes: tuple[int, ...] = (1, 32),
                   repeats: int = 20, warmup: int = 3, seed: int = 0) -> dict[int, Latency]:
    """Latency of one runner at each batch size (random inputs, seeded), under the timing lock."""
    out = {}
    for b in batch_sizes:
        x = np.random.default_rng(seed).standard_normal((b, *input_shape)).astype(np.float32)
        reps = repeats if b == 1 else max(5, repeats // 2)
        out[b] = interleaved_latency({"r": runner}, x, rounds=1, per_round=reps, warmup=warmup)["r"]
    return out


def artifact_files(path: str | Path) -> list[Path]:
    """The files an artifact consists of: an OpenVINO IR is its ``.xml`` plus the ``.bin`` beside it."""
    p = Path(path)
    files = [p]
    if p.suffix == ".xml" and p.with_suffix(".bin").is_file():
        files.append(p.with_suffix(".bin"))
    return files


def artifact_sizes(path: str | Path) -> tuple[int, int]:
    """``(bytes on disk, gzip -9 bytes)`` summed over every file of the artifact."""
    size = gz = 0
    for f in artifact_files(path):
        s, g = file_sizes(f)
        size, gz = size + s, gz + g
    return size, gz


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (empty when /proc/cpuinfo is unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def simd_width(dtype: str = "fp32") -> int:
    """How many values one SIMD register holds here: 16 fp32 with AVX-512, 8 with AVX2, else 4.

    oneDNN (used by OpenVINO, ONNX Runtime's and PyTorch's CPU convolutions) blocks channels in units of
    this width, so channel counts that are multiples of it waste no padded lanes.
    """
    flags = cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    return lanes * (4 if dtype == "int8" else 1)


RunnerFactory = Callable[[], Runner]
