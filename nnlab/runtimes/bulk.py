"""Bulk passes (a whole split's evaluation or features) in the fastest runtime verified for the model.

:func:`bulk_runtime` picks, by interleaved measurement (:func:`nnlab.runtimes.fastest_fp32_runner`), the
fastest of eager PyTorch, ONNX Runtime fp32 and OpenVINO fp32 for one model at the pass's batch size,
after checking each candidate against eager PyTorch on real images of the split (top-1 agreement 100 %,
max logit difference at most 1e-3). Eager PyTorch stays the fallback. Small passes skip the selection
(exporting and timing cost more than they save), unless the model's record already names its fastest fp32
runtime (measured once, when the model was profiled): then that runtime is built and checked, not timed
again, whatever the size of the pass. The runner built that way is kept (a few per process, keyed by the model's
content, the runtime, the threads and the input shape), so the next pass of the same model (the other split, a
re-run in fp32) neither converts nor checks it again. ``NNLAB_BULK_RUNTIME=pytorch`` turns it off.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache
from torch import nn

# below this many images per pass, eager PyTorch is used without measuring (export + timing take seconds)
MIN_IMAGES = 5000
BATCH = 256
PROBE = 16
EAGER = "pytorch-eager-fp32-cpu"

# runners built for a model's preferred runtime, checked: (model hash, runtime, threads, input shape) → (runner, facts)
_BUILT: LRUCache = LRUCache(maxsize=4)
_BUILT_LOCK = threading.Lock()


def clear_built() -> None:
    """Forget the kept runners (tests; memory)."""
    with _BUILT_LOCK:
        _BUILT.clear()


@dataclass
class BulkRuntime:
    """The runtime of one bulk pass.

    Attributes:
        runner: Runs ``predict_logits(np.ndarray)``; None means eager PyTorch in-process.
        runtime: Runtime name ("openvino-fp32-cpu", "onnxruntime-fp32-cpu", "pytorch-eager-fp32-cpu").
        summary: One line for the page: the choice and each candidate's time, or why no choice was made.
        figures: Per-candidate measurements (see :class:`nnlab.runtimes.Selection`).
    """

    runner: Any
    runtime: str
    summary: str
    figures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "summary": self.summary, "figures": self.figures}


def _enabled() -> bool:
    return os.environ.get("NNLAB_BULK_RUNTIME", "auto").strip().lower() not in ("pytorch", "eager", "off", "0")


def would_measure(model: nn.Module, images: int, min_images: int | None = None, prefer: str = "") -> bool:
    """Whether :func:`bulk_runtime` would choose by measurement (exporting and timing every candidate) for a pass of
    ``images`` images: a pass then runs its first sample in eager PyTorch and measures the choice only after its first
    number (:func:`nnlab.jobs.kinds.ensure_evaluation`)."""
    return (_enabled() and not prefer and next(model.parameters()).device.type == "cpu"
            and int(images) >= (MIN_IMAGES if min_images is None else min_images))


def bulk_runtime(model: nn.Module, data: Any, split: str, images: int | None = None, batch: int = BATCH,
                 min_images: int | None = None, threads: int | None = None, prefer: str = "") -> BulkRuntime:
    """The fastest verified runtime for a pass of ``model`` over ``images`` images of ``split``.

    ``prefer``: the runtime measured fastest for this model (its record's ``latencies``): it is built and
    checked on real images, not timed again, for passes of any size. Otherwise passes of fewer than
    ``min_images`` images (default :data:`MIN_IMAGES`) stay in eager PyTorch.

    ``model`` is not changed (candidates convert copies). Its output must be what the pass stores (logits,
    or :func:`diagnostics.mismatch.feature_model`'s features-and-logits): the check compares exactly that.
    """
    n = int(images if images is not None else len(data.labels(split)))
    if not _enabled():
        return BulkRuntime(None, EAGER, "eager PyTorch (NNLAB_BULK_RUNTIME=pytorch)")
    device = next(model.parameters()).device.type
    if device != "cpu":
        return BulkRuntime(None, f"pytorch-eager-fp32-{device}", "eager PyTorch on the accelerator")
    if prefer:
        return _preferred(model, data, split, prefer, threads)
    if n < (MIN_IMAGES if min_images is None else min_images):
        return BulkRuntime(None, EAGER, f"eager PyTorch ({n:,} images: too few to pay for choosing a runtime)")
    from nnlab.runtimes.select import BULK_CANDIDATES, fastest_fp32_runner

    probe = next(iter(data.stream(split, PROBE)))[0].numpy()  # real, preprocessed images of the split
    try:
        sel = fastest_fp32_runner(model, tuple(probe.shape[1:]), threads=threads, probe=probe,
                                  batch=min(batch, n), rounds=3, names=BULK_CANDIDATES)
    except Exception as exc:  # noqa: BLE001 - no other runtime is usable: the pass runs in eager PyTorch
        return BulkRuntime(None, EAGER, f"eager PyTorch (choosing a runtime failed: {type(exc).__name__}: {exc})")
    runner = None if sel.choice == "pytorch" else sel.runner
    summary = sel.summary() + (f" — {sel.note}" if sel.note else "")
    return BulkRuntime(runner, sel.runtime if runner is not None else EAGER, summary, sel.figures)


def _preferred(model: nn.Module, data: Any, split: str, runtime: str, threads: int | None) -> BulkRuntime:
    """The runtime the model's own measurement chose, built and checked against eager PyTorch on real images."""
    import torch

    from nnlab.runtimes.base import torch_logits
    from nnlab.runtimes.candidates import engine_of, fidelity_check, fp32_factories

    name = engine_of(runtime)
    if name == "openvino" and runtime.endswith("streams"):  # the multi-stream candidate a bulk pass measured
        name = "openvino-streams"
    why = f"measured fastest for this model when it was profiled ({runtime}); built once, not timed again"
    if name == "pytorch":
        return BulkRuntime(None, EAGER, f"eager PyTorch ({why})")
    from nnlab.models.checkpoints import model_hash

    probe = next(iter(data.stream(split, PROBE)))[0].numpy()
    threads = int(threads or torch.get_num_threads())
    key = (model_hash(model), runtime, threads, tuple(probe.shape[1:]))
    with _BUILT_LOCK:
        kept = _BUILT.get(key)
    if kept is not None:
        runner, facts = kept
        return BulkRuntime(runner, runner.runtime, f"{runner.runtime}: {why}; built and checked once in this process "
                           f"(max |Δlogit| {facts['max_abs_diff']:.1e} against eager PyTorch)",
                           [{"name": name, **facts}])
    try:
        factories = fp32_factories(model, tuple(probe.shape[1:]), threads, (name, engine_of(runtime)))
        factory = factories.get(name) or factories[engine_of(runtime)]  # streams need threads > 1
        runner = factory()
        ok, facts = fidelity_check(torch_logits(model.eval(), probe), probe, model)(name, runner)
    except Exception as exc:  # noqa: BLE001 - the chosen runtime cannot take the model here: eager, and why
        return BulkRuntime(None, EAGER, f"eager PyTorch ({runtime} failed: {type(exc).__name__}: {exc})"[:300])
    if not ok:
        return BulkRuntime(None, EAGER, f"eager PyTorch ({runtime} rejected on real images: {facts['note']})")
    with _BUILT_LOCK:
        _BUILT[key] = (runner, facts)
    return BulkRuntime(runner, runner.runtime, f"{runner.runtime}: {why}; matches eager PyTorch on {len(probe)} "
                       f"images (max |Δlogit| {facts['max_abs_diff']:.1e})", [{"name": name, **facts}])
