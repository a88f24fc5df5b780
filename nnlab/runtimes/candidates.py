"""The fp32 runners of a float model in every runtime available here, and how to check them.

A base model is measured as fp32 in each runtime (:func:`fp32_factories`: eager PyTorch, ONNX Runtime,
OpenVINO, and eager PyTorch on CUDA when a GPU is present); a variant's speed-up is measured against the
base in the variant's own runtime (:func:`same_runtime_factory`, keyed by :func:`engine_of`).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from nnlab.runtimes.base import Runner, RunnerFactory, agreement

FP32_CANDIDATES = ("pytorch", "onnxruntime", "openvino")
# bulk passes (large batches) also try OpenVINO with one stream per thread, the batch split between them
BULK_CANDIDATES = (*FP32_CANDIDATES, "openvino-streams")
EAGER = "pytorch-eager-fp32-cpu"
ENGINES = ("openvino", "onnxruntime", "pytorch")


def available_fp32() -> tuple[str, ...]:
    """The fp32 candidates of this machine: the CPU runtimes, plus "pytorch-cuda" when a GPU is present.

    ``NNLAB_RUNTIMES`` (comma-separated candidate names, e.g. ``pytorch``) limits them: a deployment that ships one
    engine, or a test about something else than runtimes. Eager PyTorch, the reference, always stays."""
    names = (*FP32_CANDIDATES, "pytorch-cuda") if torch.cuda.is_available() else FP32_CANDIDATES
    wanted = {n.strip() for n in os.environ.get("NNLAB_RUNTIMES", "").split(",") if n.strip()}
    return tuple(n for n in names if not wanted or n in wanted or n == names[0])


def engine_of(runtime: str) -> str:
    """The engine that runs a runtime name: "openvino", "onnxruntime" or "pytorch" (also "pytorch-cuda").

    E.g. "openvino-int8-cpu" → "openvino", "pytorch-fx-int8-static-cpu" → "pytorch",
    "pytorch-eager-fp32-cuda" → "pytorch-cuda". Unknown names count as eager PyTorch.
    """
    head = runtime.split("-", 1)[0]
    if head == "pytorch" and runtime.endswith("cuda"):
        return "pytorch-cuda"
    return head if head in ENGINES else "pytorch"


def precision_of(runtime: str) -> str:
    """The precision a runtime name states ("int8", "bf16", "fp16", "fp32"; "mixed" for fake-quant names)."""
    parts = runtime.replace("f32", "fp32").split("-")
    for p in ("int8", "bf16", "fp16", "fp32"):
        if p in parts:
            return p
    return "fp32" if runtime in ("pytorch-eager-cpu", "pytorch-eager-cuda") else "mixed"


def fp32_factories(model: nn.Module, input_shape: tuple[int, ...], threads: int,
                   names: tuple[str, ...] = FP32_CANDIDATES) -> dict[str, RunnerFactory]:
    """Factories of the fp32 runners of ``model`` (each works on its own copy; the model is not touched)."""
    from nnlab.runtimes.torch_eager import TorchRunner

    out: dict[str, RunnerFactory] = {}
    if "pytorch" in names:
        out["pytorch"] = lambda: TorchRunner(copy.deepcopy(model).cpu().eval(), threads, EAGER)
    if "pytorch-cuda" in names and torch.cuda.is_available():
        out["pytorch-cuda"] = lambda: TorchRunner(copy.deepcopy(model).cuda().eval(), threads,
                                                  "pytorch-eager-fp32-cuda", device="cuda")
    if "onnxruntime" in names:
        def ort() -> Runner:
            from nnlab.runtimes.onnx import ort_fp32_runner

            return ort_fp32_runner(model, input_shape, threads)

        out["onnxruntime"] = ort
    converted: list = []  # one conversion shared by the OpenVINO candidates

    def ov_model() -> Any:
        from nnlab.runtimes import openvino as ovr

        if not converted:
            converted.append(ovr.convert(model, input_shape))
        return converted[0]

    if "openvino" in names:
        def ov() -> Runner:
            from nnlab.runtimes import openvino as ovr

            return ovr.OpenVINORunner(ov_model(), threads, "f32", "openvino-fp32-cpu")

        out["openvino"] = ov
    if "openvino-streams" in names and threads > 1:
        def ov_streams() -> Runner:
            from nnlab.runtimes import openvino as ovr

            return ovr.OpenVINORunner(ov_model(), threads, "f32", f"openvino-fp32-cpu-{threads}streams",
                                      streams=threads)

        out["openvino-streams"] = ov_streams
    return out


def same_runtime_factory(runtime: str, model: nn.Module, input_shape: tuple[int, ...],
                         threads: int) -> tuple[str, RunnerFactory]:
    """The fp32 runner of ``model`` in the engine that runs ``runtime``: ``(candidate name, factory)``."""
    name = engine_of(runtime)
    return name, fp32_factories(model, input_shape, threads, (name,))[name]


Check = Any  # (candidate name, runner) -> (accepted, facts to show beside the figures)


def fidelity_check(reference: np.ndarray, probe: np.ndarray, model: nn.Module, tolerance: float = 1e-3) -> Check:
    """A check accepting runners whose logits on ``probe`` match eager PyTorch: top-1 agreement 100 %,
    max absolute logit difference ≤ ``tolerance``."""

    def check(name: str, runner: Runner) -> tuple[bool, dict]:
        agree, diff = agreement(runner, model, probe, reference)
        ok = agree == 1.0 and diff <= tolerance
        note = "" if ok else f"top-1 agreement {agree:.2%}, max |Δlogit| {diff:.2e} (needs 100 % and ≤ {tolerance:g})"
        return ok, {"top1_agreement": agree, "max_abs_diff": diff, "note": note}

    return check
