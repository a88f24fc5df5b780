"""OpenVINO as a runtime and NNCF as its int8 quantizer.

- :func:`convert` turns a PyTorch model into an ``ov.Model`` with a dynamic batch axis (``ov.convert_model``
  on a copy, traced with an example input), falling back to converting its ONNX export.
- :class:`OpenVINORunner` compiles a model (in memory or a saved IR) for the CPU with the intra-op thread
  count fixed (``INFERENCE_NUM_THREADS``), one stream, the latency hint, and an explicit inference
  precision: ``f32`` by default (this CPU plugin would otherwise run float layers in bf16 wherever the CPU
  has bf16 instructions), ``bf16`` or ``f16`` on request where the CPU supports them. Batch sizes that are
  timed (:meth:`OpenVINORunner.prepare`) or that recur get their own static-shape compilation (MobileNetV2
  int8 at 224, batch 1: about 10 % faster than the dynamic-batch model); others run on the dynamic one.
- :func:`quantize` runs ``nncf.quantize`` (post-training: statistics on calibration samples, fast bias
  correction) with its presets and ignored scopes; :func:`quantize_with_accuracy_control` runs
  ``nncf.quantize_with_accuracy_control`` with a maximum accuracy drop on labelled validation samples.
- :func:`save_ir` writes the IR (``.xml`` + ``.bin``) atomically, float weights kept in fp32
  (``compress_to_fp16=False``); :func:`load_ir` reads it back.

Nothing here changes process-wide state (NNCF's progress bars are printed as NNCF prints them).
"""

from __future__ import annotations

import copy
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnlab.i18n import _
from nnlab.runtimes.base import as_input

PRECISIONS = ("f32", "bf16", "f16")
PRESETS = ("performance", "mixed")
# The call on which a shape counts as recurring and may take a free static-shape place. Probes run a shape
# once or twice (the int8 calibration check runs its batch twice); bulk passes run theirs many times.
RECURS = 3

_CORE: Any = None
_CORE_LOCK = threading.Lock()


def available() -> bool:
    """True when OpenVINO (and so this runtime) can be imported."""
    try:
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: not available
        return False
    return True


def core() -> Any:
    """The process's one ``ov.Core`` (created on first use; compiling models on it is thread-safe)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


def supported_precisions() -> tuple[str, ...]:
    """Inference precisions this CPU runs natively: always f32, plus bf16 / f16 when the plugin reports them."""
    caps = set(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return ("f32",) + (("bf16",) if "BF16" in caps else ()) + (("f16",) if "FP16" in caps else ())


def convert(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """A PyTorch model as an ``ov.Model`` with a dynamic batch axis; the caller's model is not touched.

    ``ov.convert_model`` traces a copy with a zero example input; when that fails the model is exported to
    ONNX and the ONNX file is converted instead.
    """
    import openvino as ov

    work = copy.deepcopy(model).cpu().eval()
    shape = ov.PartialShape([-1, *map(int, input_shape)])
    try:
        with torch.no_grad():
            return ov.convert_model(work, example_input=torch.zeros(1, *input_shape), input=[shape])
    except Exception as first:  # noqa: BLE001 - try the ONNX route before giving up
        import tempfile

        from nnlab.runtimes.onnx import export_onnx

        with tempfile.TemporaryDirectory(prefix="nnlab-ov-") as d:
            path = Path(d) / "model.onnx"
            try:
                export_onnx(work, input_shape, path)
                return ov.convert_model(str(path))
            except Exception as second:  # noqa: BLE001 - report both routes
                raise RuntimeError(f"OpenVINO could not convert the model (PyTorch: {type(first).__name__}: "
                                   f"{str(first)[:160]}; ONNX: {type(second).__name__}: {str(second)[:160]})"
                                   ) from second


class OpenVINORunner:
    """An OpenVINO model compiled for the CPU with a fixed thread count and inference precision.

    Args:
        model: An ``ov.Model`` or the path of a saved IR ``.xml`` (or ``.onnx``) file.
        threads: Intra-op threads (default: torch's current count), shared by the streams.
        streams: 1 (default): one stream, latency hint. More (at most ``threads``): the throughput hint with that
            many streams; a batch is split into that many parts run at once (bulk passes: about 7 % faster
            than one stream on ResNet-18 at 224 with 2 threads).
        precision: Inference precision of the float layers: "f32" (exact; the default), "bf16" or "f16"
            (only where :func:`supported_precisions` lists it). Int8 layers run in int8 either way.
        runtime: Name recorded with latencies (default "openvino-<precision>-cpu").
        static_shapes: How many input shapes at most hold a static-shape compilation of their own (one stream
            only); 0 runs everything on the dynamic-batch model. Each one holds its own copy of the packed
            weights, so the number is small. A shape gets one when :meth:`prepare` asks for it (timing code
            does, before its warm-up: the least recently used one makes room), or on its :data:`RECURS`-th
            call while a place is free (a probe batch run once or twice takes none). Other shapes, a shape
            whose compilation failed, and every shape of a model that never reshapes run on the dynamic
            model. A runner of an in-memory ``ov.Model`` keeps that graph to compile from (a runner of a file
            reads the file again).
    """

    def __init__(self, model: Any, threads: int | None = None, precision: str = "f32",
                 runtime: str | None = None, streams: int = 1, static_shapes: int = 2) -> None:
        if precision not in PRECISIONS:
            raise ValueError(_("precision must be one of {choices}, got {precision!r}").format(
                choices=', '.join(PRECISIONS), precision=precision))
        if precision not in supported_precisions():
            raise ValueError(_("this CPU has no native {precision} support in OpenVINO (supported: {value})").format(
                precision=precision, value=', '.join(supported_precisions())))
        self.threads = int(threads or torch.get_num_threads())
        self.precision = precision
        self.runtime = runtime or f"openvino-{precision}-cpu"
        self.path = Path(model) if isinstance(model, (str, Path)) else None
        self.streams = max(1, min(int(streams), self.threads))
        config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": self.streams,
                  "PERFORMANCE_HINT": "LATENCY" if self.streams == 1 else "THROUGHPUT",
                  "INFERENCE_PRECISION_HINT": precision}
        self._model, self._config = model, config
        self.compiled = core().compile_model(str(model) if self.path else model, "CPU", config)
        self._request = self.compiled.create_infer_request()
        # the input shape the model accepts (None with several inputs: OpenVINO checks those itself)
        self._accepts = self.compiled.input(0).partial_shape if len(self.compiled.inputs) == 1 else None
        # input shape → its static-shape infer request, least recently used first
        self._static: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._budget = max(0, int(static_shapes)) if self.streams == 1 else 0
        self._seen: dict[tuple[int, ...], int] = {}  # calls per shape not (yet) compiled static
        self._failed: set[tuple[int, ...]] = set()  # shapes whose static compilation failed
        if not self._budget:
            self._model = None  # nothing will be reshaped: do not keep the graph alive
        self._queue = None
        if self.streams > 1:  # a batch is split over the streams, each running its part on its own threads
            import openvino as ov

            self._queue = ov.AsyncInferQueue(self.compiled, self.streams)
            self._parts: dict[int, np.ndarray] = {}
            self._queue.set_callback(self._keep)
        self._lock = threading.Lock()  # one infer request (or queue): calls from several threads take turns

    def _keep(self, request: Any, index: int) -> None:
        self._parts[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def _fits(self, shape: tuple[int, ...]) -> bool:
        """Whether ``shape`` is one the dynamic model accepts (only the free axes differ)."""
        import openvino as ov

        return self._accepts is None or self._accepts.compatible(ov.PartialShape(list(shape)))

    def _compile_static(self, shape: tuple[int, ...], evict: bool) -> Any:
        """The static-shape infer request for ``shape``, compiled now if there is room (or ``evict`` makes
        room by dropping the least recently used one); None where it stays on the dynamic model."""
        if shape in self._static:
            self._static.move_to_end(shape)
            return self._static[shape]
        if not self._budget or shape in self._failed or not self._fits(shape):
            return None
        if len(self._static) >= self._budget and not evict:
            return None
        try:
            m = core().read_model(str(self.path)) if self.path else self._model.clone()
            m.reshape(list(shape))
            request = core().compile_model(m, "CPU", self._config).create_infer_request()
        except Exception:  # noqa: BLE001 - this shape runs dynamic; a model that never reshapes, every shape
            if len(self._failed) >= 64:
                self._failed.clear()
            self._failed.add(shape)
            if not self._static:  # none ever worked (one that did keeps a place: eviction only replaces)
                self._budget, self._model = 0, None
            return None
        if len(self._static) >= self._budget:  # evicted only once the new one is there
            self._static.popitem(last=False)
        self._static[shape] = request
        return request

    def prepare(self, shape: Sequence[int]) -> bool:
        """Compile ``shape`` statically now, so that the calls timed next run what later calls of that shape
        run (and the compilation is not timed). Returns whether ``shape`` has a static compilation."""
        with self._lock:
            return self._compile_static(tuple(int(s) for s in shape), evict=True) is not None

    def _request_for(self, shape: tuple[int, ...]) -> Any:
        """The infer request to run ``shape`` on: its static one, else the dynamic-batch one."""
        if shape not in self._static and self._budget:
            calls = self._seen.pop(shape, 0) + 1
            if calls < RECURS:  # not recurring (yet): no compilation
                if len(self._seen) >= 64:  # many one-off shapes: forget them rather than grow
                    self._seen.clear()
                self._seen[shape] = calls
                return self._request
        static = self._compile_static(shape, evict=False)  # its own, or a free place for a recurring one
        return self._request if static is None else static

    def predict_logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits for normalised ``N×C×H×W`` inputs."""
        x = as_input(x)
        if not self._fits(tuple(x.shape)):  # OpenVINO itself would return an empty array, not raise
            raise ValueError(_("this model takes inputs of shape {accepts}, not {value}").format(
                accepts=self._accepts, value=list(x.shape)))
        with self._lock:
            if self._queue is None or len(x) < 2:
                out = self._request_for(tuple(x.shape)).infer({0: x})
                return np.array(out[0], dtype=np.float32, copy=True)  # the request reuses its output buffer
            chunks = np.array_split(x, min(self.streams, len(x)))
            self._parts.clear()
            for i, chunk in enumerate(chunks):
                self._queue.start_async({0: np.ascontiguousarray(chunk)}, i)
            self._queue.wait_all()
            return np.concatenate([self._parts[i] for i in range(len(chunks))])


def save_ir(model: Any, xml_path: str | Path) -> tuple[Path, Path]:
    """Write ``model`` as an IR (``.xml`` + ``.bin``), float weights in fp32, atomically.

    Both files are written into a temporary folder beside the target, flushed, then renamed into place
    (the ``.bin`` first, the ``.xml`` last): a reader never sees an ``.xml`` without its complete ``.bin``.
    Returns the two paths.
    """
    import openvino as ov

    xml = Path(xml_path)
    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.parent / f".{xml.stem}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    tmp.mkdir()
    try:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        for f in (tmp / "model.bin", tmp / "model.xml"):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp / "model.bin", xml.with_suffix(".bin"))
        os.replace(tmp / "model.xml", xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml, xml.with_suffix(".bin")


def load_ir(xml_path: str | Path) -> Any:
    """Read a saved IR back as an ``ov.Model`` (the ``.bin`` beside the ``.xml``)."""
    xml = Path(xml_path)
    if not xml.is_file() or not xml.with_suffix(".bin").is_file():
        raise FileNotFoundError(_("the OpenVINO IR {xml} (or its .bin) is missing").format(xml=xml))
    return core().read_model(str(xml))


def ignored_scope(names: str = "", patterns: str = "", types: str = "") -> Any:
    """An ``nncf.IgnoredScope`` from comma-separated node names, regular expressions and op types (or None)."""
    import nncf

    def split(text: str) -> list[str]:
        return [p.strip() for p in (text or "").split(",") if p.strip()]

    n, p, t = split(names), split(patterns), split(types)
    return nncf.IgnoredScope(names=n, patterns=p, types=t) if (n or p or t) else None


def _dataset(samples: np.ndarray | torch.Tensor) -> Any:
    import nncf

    arr = as_input(samples)
    return nncf.Dataset([arr[i:i + 1] for i in range(len(arr))])


def quantize(model: Any, calib: np.ndarray | torch.Tensor, preset: str = "performance", scope: Any = None,
             fast_bias_correction: bool = True) -> Any:
    """``nncf.quantize`` on an ``ov.Model``: int8 weights and activations, ranges from ``calib`` samples.

    Args:
        model: The float ``ov.Model`` (not changed).
        calib: Normalised calibration samples ``N×C×H×W`` (each one item of the NNCF dataset).
        preset: "performance" (symmetric activations) or "mixed" (asymmetric activations).
        scope: An ``nncf.IgnoredScope`` (see :func:`ignored_scope`) or None.
        fast_bias_correction: NNCF's fast bias correction (else the slower full one).
    """
    import nncf

    if preset not in PRESETS:
        raise ValueError(_("preset must be one of {choices}").format(choices=', '.join(PRESETS)))
    if len(calib) == 0:
        raise ValueError(_("NNCF quantization needs calibration samples"))
    return nncf.quantize(model, _dataset(calib), preset=nncf.QuantizationPreset(preset), subset_size=len(calib),
                         fast_bias_correction=fast_bias_correction, ignored_scope=scope)


def quantize_with_accuracy_control(model: Any, calib: np.ndarray | torch.Tensor, val_x: np.ndarray | torch.Tensor,
                                   val_y: Sequence[int] | np.ndarray, max_drop: float = 0.01,
                                   preset: str = "performance", scope: Any = None,
                                   fast_bias_correction: bool = True) -> Any:
    """``nncf.quantize_with_accuracy_control``: layers go back to float until top-1 accuracy on the labelled
    validation samples has dropped by at most ``max_drop`` (a fraction: 0.01 is one point)."""
    import nncf

    vx = as_input(val_x)
    vy = np.asarray(val_y).astype(np.int64)
    if len(vx) == 0 or len(vx) != len(vy):
        raise ValueError(_("accuracy control needs labelled validation samples"))
    validation = nncf.Dataset([(vx[i:i + 1], int(vy[i])) for i in range(len(vx))], lambda item: item[0])

    def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
        hits = [float(np.asarray(compiled(x)[0]).argmax(1)[0] == y) for x, y in items]
        return (float(np.mean(hits)) if hits else 0.0), hits

    return nncf.quantize_with_accuracy_control(
        model, _dataset(calib), validation, validate, max_drop=float(max_drop), preset=nncf.QuantizationPreset(preset),
        subset_size=len(calib), fast_bias_correction=fast_bias_correction, ignored_scope=scope)
