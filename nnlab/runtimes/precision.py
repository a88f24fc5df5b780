"""Reduced precision for bulk passes, behind a fidelity gate.

Where the CPU computes bf16 natively (AMX-BF16 or AVX-512 BF16; :func:`cpu_support` reads the flags), a bulk pass
(the evaluation of a split) may run its float layers in bf16: :func:`reduced_runner` builds OpenVINO with
``INFERENCE_PRECISION_HINT=bf16`` (torch autocast bf16 where OpenVINO is missing). Before it is used, :func:`gate`
compares its logits with the fp32 runtime's on the pass's first images: top-1 agreement at least
:data:`MIN_AGREEMENT` (99.5 %) and finite logits; the max and mean absolute logit error are stated either way.
A refused runner is never used, and the reason is kept for the page. int8 is not tried for bulk passes: it needs a
calibrated copy (NNCF, tens of seconds for a ResNet), more than it saves on one pass.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from cachetools import LRUCache
from torch import nn

from nnlab.runtimes.base import cpu_flags

MIN_AGREEMENT = 0.995
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")


def cpu_support(flags: set[str] | None = None) -> dict[str, Any]:
    """Which reduced precisions this CPU runs natively, and the flags that say so.

    Returns ``{"bf16": bool, "int8": bool, "features": [flags found], "amx": bool}``.
    """
    flags = cpu_flags() if flags is None else set(flags)
    found = [f for f in (*BF16_FLAGS, *INT8_FLAGS) if f in flags]
    return {"bf16": any(f in flags for f in BF16_FLAGS), "int8": any(f in flags for f in INT8_FLAGS),
            "amx": any(f.startswith("amx") for f in found), "features": found}


@dataclass
class Gate:
    """The fidelity gate's verdict on a reduced-precision runner against fp32 on the same images.

    Attributes:
        runtime: The candidate's runtime name (e.g. "openvino-bf16-cpu").
        precision: Its precision ("bf16").
        images: How many images were compared.
        agreement: Fraction of images with the same top-1 class as fp32.
        max_abs_err: Largest absolute logit difference.
        mean_abs_err: Mean absolute logit difference.
        passed: Whether the candidate may be used.
        reason: Why it was refused ("" when it passed).
    """

    runtime: str
    precision: str
    images: int
    agreement: float
    max_abs_err: float
    mean_abs_err: float
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(reference: np.ndarray, candidate: np.ndarray, runtime: str, precision: str = "bf16",
         min_agreement: float = MIN_AGREEMENT) -> Gate:
    """Accept ``candidate`` logits when their top-1 agrees with the fp32 ``reference`` on at least ``min_agreement``
    of the images and every logit is finite; the logit errors are measured and stated either way."""
    ref = np.asarray(reference, np.float32)
    out = np.asarray(candidate, np.float32)
    n = len(ref)
    if out.shape != ref.shape or n == 0:
        return Gate(runtime, precision, n, 0.0, float("inf"), float("inf"), False,
                    f"output shape {list(out.shape)} differs from fp32's {list(ref.shape)}" if n else "no images")
    if not np.isfinite(out).all():
        return Gate(runtime, precision, n, 0.0, float("inf"), float("inf"), False, "non-finite logits")
    same = ref.argmax(1) == out.argmax(1)
    err = np.abs(ref - out)
    agree = float(same.mean())
    g = Gate(runtime, precision, n, agree, float(err.max()), float(err.mean()), agree >= min_agreement)
    if not g.passed:
        g.reason = (f"top-1 agreement with fp32 {agree:.2%} < {min_agreement:.1%}: {int((~same).sum())} of {n} "
                    f"predictions changed")
    return g


class AutocastRunner:
    """Eager PyTorch with CPU autocast to bf16 (the reduced-precision runner where OpenVINO is missing)."""

    def __init__(self, module: nn.Module, threads: int | None = None) -> None:
        self.module = module.eval()
        self.threads = int(threads or torch.get_num_threads())
        self.runtime = "pytorch-eager-bf16-cpu"

    def predict_logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        from nnlab.threads import torch_threads

        t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
        with torch_threads(self.threads), torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return self.module(t).float().numpy()


def unsupported_reason(support: dict[str, Any] | None = None) -> str:
    """Why no reduced precision is tried here ("" when bf16 is native)."""
    s = cpu_support() if support is None else support
    if s["bf16"]:
        return ""
    return ("this CPU has no native bf16 (needs AMX-BF16 or AVX-512 BF16; found: "
            + (", ".join(s["features"]) or "none") + ")")


def reduced_runner(model: nn.Module, input_shape: tuple[int, ...], threads: int, streams: int = 1) -> Any:
    """A bf16 runner of ``model`` (not changed: copies are converted): OpenVINO bf16 where the plugin runs it,
    else torch autocast bf16. Raises when this CPU has no native bf16.

    The runner is kept (two per process, keyed by the model's content, the input shape, threads and streams), so
    the passes of one model (test split, train split) convert and compile it once."""
    why = unsupported_reason()
    if why:
        raise RuntimeError(why)
    from nnlab.models.checkpoints import model_hash
    from nnlab.runtimes import openvino as ovr

    key = (model_hash(model), tuple(input_shape), int(threads), int(streams))
    with _KEPT_LOCK:
        kept = _KEPT.get(key)
    if kept is not None:
        return kept
    if ovr.available() and "bf16" in ovr.supported_precisions():
        name = "openvino-bf16-cpu" + (f"-{streams}streams" if streams > 1 else "")
        runner: Any = ovr.OpenVINORunner(ovr.convert(model, input_shape), threads, "bf16", name, streams=streams)
    else:
        runner = AutocastRunner(copy.deepcopy(model).cpu().eval(), threads)
    with _KEPT_LOCK:
        _KEPT[key] = runner
    return runner


_KEPT: LRUCache = LRUCache(maxsize=2)
_KEPT_LOCK = threading.Lock()
