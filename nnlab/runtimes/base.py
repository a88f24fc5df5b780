"""The Runner protocol: one way to execute a model outside (or inside) eager PyTorch, and how to check one.

A runner is anything with ``runtime`` (a name such as "openvino-int8-cpu"), ``threads`` (the intra-op
thread count it was built with, fixed for its life) and ``predict_logits(x)`` taking normalised float32
``N×C×H×W`` inputs and returning ``N×K`` logits as a numpy array. Everything that evaluates, calibrates or
times a model goes through a runner, so the figures always come from the runtime that executes it.

This module also holds the helpers every runtime shares: fidelity against eager PyTorch
(:func:`agreement`), the files of multi-file artifacts, and the CPU's SIMD width (channel counts that are
multiples of it suit the kernels). Timing and sizes live in :mod:`nnlab.measure`, the one measurement path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn


@runtime_checkable
class Runner(Protocol):
    """A model executed by some runtime on the CPU with a fixed thread count."""

    runtime: str
    threads: int

    def predict_logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray: ...


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


def artifact_files(path: str | Path) -> list[Path]:
    """The files an artifact consists of: an OpenVINO IR is its ``.xml`` plus the ``.bin`` beside it."""
    p = Path(path)
    files = [p]
    if p.suffix == ".xml" and p.with_suffix(".bin").is_file():
        files.append(p.with_suffix(".bin"))
    return files


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
