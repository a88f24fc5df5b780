"""The one evaluation pass: a model over a dataset split, once, per-sample results."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nnlab import config
from nnlab.data.sets import ImageDataset
from nnlab.i18n import _


@dataclass(eq=False)
class EvalResult:
    """Per-sample outputs of one pass over a split.

    Attributes:
        logits: ``N×K`` float32.
        probs: ``N×K`` softmax probabilities.
        losses: ``N`` cross-entropy per sample.
        preds: ``N`` predicted class.
        labels: ``N`` true class.
    """

    logits: np.ndarray
    probs: np.ndarray
    losses: np.ndarray
    preds: np.ndarray
    labels: np.ndarray

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.labels).mean()) if len(self.labels) else float("nan")

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy

    def per_class_accuracy(self, num_classes: int) -> list[float]:
        out = []
        for c in range(num_classes):
            m = self.labels == c
            out.append(float((self.preds[m] == c).mean()) if m.any() else float("nan"))
        return out


def predict_logits(model: nn.Module | None, data: ImageDataset, split: str, batch_size: int = 512,
                   indices: np.ndarray | None = None, device: torch.device | None = None,
                   progress: Callable[[str, float], None] | None = None,
                   cancel: Callable[[], bool] | None = None, runner: Any = None) -> np.ndarray:
    """Logits of ``model`` over a split (or ``indices`` of it), batched, in inference mode.

    Batches stream from the dataset (read and normalised ahead in a background thread). ``runner``: run the
    batches in that runtime (anything with ``predict_logits(np.ndarray) -> np.ndarray``, e.g. ONNX Runtime)
    instead of eager PyTorch (``model`` may then be None). ``progress(message, fraction)`` hears about every batch; ``cancel()`` returning
    True stops the pass (raising :class:`nnlab.train.Cancelled`).
    """
    if runner is None:
        if model is None:
            raise ValueError(_("predict_logits needs a model or a runner"))
        device = device or _model_device(model)
        model.eval()
    outs = []
    n = len(indices) if indices is not None else len(data.labels(split))
    done = 0
    with torch.inference_mode():
        for x, _y in data.stream(split, batch_size, indices=indices):
            if cancel is not None and cancel():
                from nnlab.errors import Cancelled

                raise Cancelled(_("cancelled by the user"))
            if runner is not None:
                outs.append(torch.from_numpy(np.asarray(runner.predict_logits(x.numpy()), dtype=np.float32)))
            else:
                outs.append(model(x.to(device)).float().cpu())
            done += len(x)
            if progress is not None:
                progress(_("evaluating the {split} split: {done:,}/{n:,} images").format(split=split, done=done, n=n),
                         done / max(1, n))
    return torch.cat(outs).numpy() if outs else np.zeros((0, data.num_classes), np.float32)


def result_from_logits(logits: np.ndarray, labels: np.ndarray) -> EvalResult:
    """Build an :class:`EvalResult` from logits and labels (softmax, per-sample cross-entropy, argmax)."""
    t = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    logp = torch.log_softmax(t, dim=1)
    losses = -logp.gather(1, y.view(-1, 1)).squeeze(1) if len(y) else torch.zeros(0)
    return EvalResult(logits=t.numpy(), probs=logp.exp().numpy(), losses=losses.numpy(),
                      preds=t.argmax(1).numpy() if len(y) else np.zeros(0, np.int64), labels=y.numpy())


def evaluate(model: nn.Module, data: ImageDataset, split: str = "test", batch_size: int = 512,
             indices: np.ndarray | None = None, device: torch.device | None = None) -> EvalResult:
    """Run ``model`` once over ``split`` and return per-sample logits, probabilities, losses and predictions."""
    logits = predict_logits(model, data, split, batch_size, indices, device)
    labels = data.labels(split).numpy()
    if indices is not None:
        labels = labels[np.asarray(indices)]
    return result_from_logits(logits, labels)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return config.device()


# --- the streamed pass: first numbers in seconds, the rest in the fastest runtime that passes the gate -------------

def _run_chunks(runner: Any, model: nn.Module | None, data: ImageDataset, split: str, indices: np.ndarray,
                batch_size: int, cancel: Callable[[], bool] | None,
                each: Callable[[np.ndarray, np.ndarray], None],
                layout: torch.memory_format = torch.contiguous_format) -> float:
    """Run ``indices`` of a split batch by batch (``runner``, or eager ``model`` when None, its inputs in ``layout``:
    see :func:`_channels_last`); ``each(idx, logits)`` hears about every batch. Returns the seconds spent."""
    import time

    from nnlab.errors import Cancelled

    t0 = time.perf_counter()
    start = 0
    with torch.inference_mode():
        for x, _ in data.stream(split, batch_size, indices=indices):
            if cancel is not None and cancel():
                raise Cancelled("cancelled by the user")
            if runner is not None:
                out = np.asarray(runner.predict_logits(x.numpy()), dtype=np.float32)
            else:
                out = model(x.to(_model_device(model)).contiguous(memory_format=layout)).float().cpu().numpy()
            each(indices[start:start + len(x)], out)
            start += len(x)
    return time.perf_counter() - t0


def _channels_last(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[nn.Module, torch.memory_format]:
    """The eager model to run a pass's images through, and the memory layout of its inputs.

    On the CPU a convolutional network at 64 px and more runs in channels-last layout: oneDNN's convolutions take
    it directly (ResNet-50 at 224 on 2 threads: about 65 instead of 97 ms per image), so the first sample's number
    comes sooner. The layout is changed on a copy, never on the model (a cache or another session holds it); the
    values are the same up to float rounding. Anything else (small images, no convolution, a GPU, a model that
    cannot be copied) runs as it is.
    """
    try:
        if (len(input_shape) != 3 or min(input_shape[1:]) < 64 or _model_device(model).type != "cpu"
                or not any(isinstance(m, nn.Conv2d) for m in model.modules())):
            return model, torch.contiguous_format
        return copy.deepcopy(model).eval().to(memory_format=torch.channels_last), torch.channels_last
    except Exception:  # noqa: BLE001 - the model as it is: the same numbers, the usual speed
        return model, torch.contiguous_format


def _prepare(runner: Any, shape: tuple[int, ...]) -> None:
    """Compile a runner's static shape before it is timed (OpenVINO), so both runners are timed alike."""
    prepare = getattr(runner, "prepare", None)
    if prepare is not None:
        try:
            prepare(shape)
        except Exception:  # noqa: BLE001 - it runs on its dynamic shape instead
            pass


def streamed_pass(model: nn.Module | None, data: ImageDataset, split: str, runner: Any = None,
                  runtime: str = "pytorch-eager-fp32-cpu", precision: str = "auto", first: int | None = None,
                  batch_size: int = 64, reduced: Callable[[], Any] | None = None, min_rest: int | None = None,
                  on_chunk: Callable[[dict], None] | None = None, cancel: Callable[[], bool] | None = None,
                  rest_fp32: Callable[[], tuple[Any, str]] | None = None) -> tuple[np.ndarray, dict]:
    """Logits of a whole split with a first accuracy in seconds, in the fastest runtime that passes the gate.

    1. A stratified sample of the split (:func:`nnlab.estimate.stream_order`) runs in fp32 (``runner``, or eager
       ``model``): its accuracy is the first number (``on_chunk`` hears it at once).
    2. Unless ``precision == "fp32"`` (the user's switch) or the CPU has no native bf16 (stated), a bf16 runner
       (``reduced()``, default :func:`nnlab.runtimes.precision.reduced_runner`) runs the same images; the fidelity
       gate (:func:`nnlab.runtimes.precision.gate`) compares it with fp32. It is used for the rest when it passes
       and ran faster; otherwise the rest stays in fp32 and the reason is kept. A rest shorter than ``min_rest``
       images (default: four first samples) stays in fp32 without trying: building and checking would cost more.
    3. The rest of the split, in a seeded random order, chunk by chunk: after each, ``on_chunk`` hears the running
       counts (``done`` of ``total`` images, ``correct``), so the running accuracy estimates the whole split's.

    ``rest_fp32()``: called once right after the first number (a model whose fastest runtime is not known yet: the
    first sample runs in ``runner``, typically eager PyTorch, and the runtime choice is measured only now), it returns
    ``(runner, runtime)`` of the fp32 rest; a bf16 candidate is then timed against that runner.

    Returns ``(logits in the split's order, info)``; ``info`` holds the runtime and precision of the rest, the gate
    (``gate``: a :class:`~nnlab.runtimes.precision.Gate` as a dict, or ``None``; ``gate_note`` says what became of
    bf16 and ``gate_code`` names the case: "used", "refused", "slower", "failed", "unsupported", "forced", "few",
    "whole"), the sample size and the seconds to the first number and to the end.
    """
    import time

    from nnlab.estimate import FIRST_SAMPLE, stream_order
    from nnlab.runtimes import precision as prec

    if runner is None and model is None:
        raise ValueError("streamed_pass needs a model or a runner")
    if runner is None:
        model.eval()
    # eager passes (the first sample without a runner, and the rest when none is chosen) share one channels-last copy
    eager, layout = (_channels_last(model, tuple(data.input_shape)) if runner is None
                     else (model, torch.contiguous_format))
    t0 = time.perf_counter()
    labels = data.labels(split).numpy()
    total = len(labels)
    order, n_first = stream_order(labels, FIRST_SAMPLE if first is None else first)
    logits: np.ndarray | None = None
    state = {"total": total, "done": 0, "correct": 0, "first_images": n_first, "first_correct": 0,
             "phase": "first", "runtime": runtime, "precision": "fp32", "gate": None, "gate_note": "",
             "gate_code": "",
             "first_seconds": None, "seconds": None}

    def keep(idx: np.ndarray, out: np.ndarray) -> None:
        nonlocal logits
        if logits is None:
            logits = np.zeros((total, out.shape[1]), np.float32)
        logits[idx] = out
        state["done"] += len(idx)
        state["correct"] += int((out.argmax(1) == labels[idx]).sum())
        if state["phase"] != "first" and on_chunk is not None:
            on_chunk(dict(state))

    shape = (batch_size, *tuple(data.input_shape))
    _prepare(runner, shape)
    first_idx = order[:n_first]
    fp32_s = _run_chunks(runner, eager, data, split, first_idx, batch_size, cancel, keep, layout)
    state.update(first_correct=state["correct"], first_seconds=round(time.perf_counter() - t0, 3), phase="gate")
    if on_chunk is not None:
        on_chunk(dict(state))
    rest_runner, rest_runtime = runner, runtime
    if rest_fp32 is not None and n_first < total:  # the runtime choice, measured after the first number
        rest_runner, rest_runtime = rest_fp32()
        if rest_runner is not runner:
            _prepare(rest_runner, shape)
        state["runtime"] = rest_runtime
    support = prec.cpu_support()
    if n_first >= total:
        state.update(gate_code="whole", gate_note="the first sample is the whole split: nothing left to speed up")
    elif precision == "fp32":
        state.update(gate_code="forced", gate_note="fp32 forced by the switch")
    elif total - n_first < (4 * n_first if min_rest is None else min_rest):
        state["gate_code"] = "few"
        state["gate_note"] = (f"{total - n_first:,} images after the first sample: too few to pay for building and "
                              "checking a bf16 runner")
    elif not support["bf16"]:
        state.update(gate_code="unsupported", gate_note=prec.unsupported_reason(support))
    else:
        try:
            cand = reduced() if reduced is not None else prec.reduced_runner(
                model, tuple(data.input_shape), int(getattr(runner, "threads", 0) or torch.get_num_threads()),
                streams=int(getattr(runner, "streams", 1) or 1))
            _prepare(cand, shape)
            if rest_runner is not runner:  # the fp32 the candidate must beat is the rest's runner: time it alike
                fp32_s = _run_chunks(rest_runner, model, data, split, first_idx, batch_size, cancel,
                                     lambda i, o: None)
            got: list[tuple[np.ndarray, np.ndarray]] = []
            red_s = _run_chunks(cand, None, data, split, first_idx, batch_size, cancel,
                                lambda i, o: got.append((i, o)))
            cand_logits = np.concatenate([o for _, o in got])
            verdict = prec.gate(logits[first_idx], cand_logits, cand.runtime, "bf16")
            state["gate"] = {**verdict.to_dict(), "fp32_ms": round(1000 * fp32_s / n_first, 3),
                             "reduced_ms": round(1000 * red_s / n_first, 3)}
            if not verdict.passed:
                state.update(gate_code="refused", gate_note=f"{cand.runtime} refused: {verdict.reason}; fp32 kept")
            elif red_s >= fp32_s:
                state["gate_code"] = "slower"
                g = state["gate"]
                state["gate_note"] = (f"{cand.runtime} passed the gate but ran no faster than {rest_runtime} "
                                      f"({g['reduced_ms']:.2f} vs {g['fp32_ms']:.2f} ms/image): fp32 kept")
            else:
                rest_runner, rest_runtime = cand, cand.runtime
                state.update(precision="bf16", gate_code="used",
                             gate_note=f"{cand.runtime} passed the gate: used for the rest")
        except Exception as exc:  # noqa: BLE001 - no reduced runner here: fp32, and why
            from nnlab.errors import Cancelled

            if isinstance(exc, Cancelled):
                raise
            state["gate_code"] = "failed"
            state["gate_note"] = f"bf16 could not be built: {type(exc).__name__}: {str(exc)[:200]}; fp32 kept"
    state.update(phase="rest", runtime=rest_runtime)
    if on_chunk is not None:
        on_chunk(dict(state))
    _run_chunks(rest_runner, eager, data, split, order[n_first:], batch_size, cancel, keep, layout)
    state.update(phase="done", seconds=round(time.perf_counter() - t0, 3))
    if on_chunk is not None:
        on_chunk(dict(state))
    if logits is None:
        logits = np.zeros((0, data.num_classes), np.float32)
    return logits, state
