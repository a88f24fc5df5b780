"""Real int8 execution: post-training quantization run by an int8 runtime, not simulated.

Two backends, chosen in the config, so nnlab does not stand on one deprecated API:

- ``onnxruntime`` (default): the float model is exported to ONNX (``torch.onnx.export``, the torch.export-based
  exporter, falling back to the TorchScript one), pre-processed (shape inference, Conv+BatchNorm folding),
  then quantized by ONNX Runtime: *static* — weights int8 (per channel or per tensor) and activations uint8
  with ranges calibrated on a user-chosen number of training samples (``quantize_static`` with a
  ``CalibrationDataReader``, QDQ or QOperator format) — or *dynamic* — int8 weights of Linear layers
  (Gemm/MatMul), activation ranges computed at run time, convolutions left in float. The artifact is the
  int8 ``.onnx`` file; an ``InferenceSession`` with fixed intra-op threads executes it.
- ``torch-fx``: torch.ao FX graph mode (``prepare_fx`` / calibration / ``convert_fx``, x86 backend with
  fbgemm/oneDNN kernels), deprecated upstream but still shipped in torch 2.14. Dynamic mode (int8 Linear
  only) uses torch.ao's ``quantize_dynamic`` module swap, because FX's fusion check refuses a Linear-only
  dynamic qconfig next to fused Conv+ReLU patterns. The artifact is the quantized state dict.

The returned model is a :class:`RuntimeModule`: its forward runs the int8 runtime, so any PyTorch caller gets
the real int8 outputs; it keeps the float model as ``float_model`` for parameter counts and MACs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from compression.registry import (
    CompressContext,
    CompressResult,
    MethodConfig,
    check_choice,
    check_range,
    register,
    register_loader,
)
from nnlab.data import ImageDataset
from nnlab.measure import counting_macs
from nnlab.workspace import atomic_path

BACKENDS = ("onnxruntime", "torch-fx")
MODES = ("static", "dynamic")
FORMATS = ("qdq", "qoperator")
CALIBRATIONS = ("minmax", "entropy", "percentile")
EXPORTERS = ("dynamo", "torchscript")
ONNX_FORMAT = "onnx-int8"
FX_FORMAT = "torch-fx-int8"


# --- fidelity ---------------------------------------------------------------------------------------------

def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(Σ ref² / Σ (ref − test)²)`` in dB (inf when equal)."""
    ref = np.asarray(reference, np.float64)
    noise = float(((ref - np.asarray(test, np.float64)) ** 2).sum())
    signal = float((ref**2).sum())
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax is the same in both logit arrays."""
    return float((np.asarray(a).argmax(1) == np.asarray(b).argmax(1)).mean())


def calibration_inputs(data: ImageDataset, samples: int, seed: int = 0) -> torch.Tensor:
    """``samples`` normalised training images drawn at random (seeded) for activation calibration."""
    n = len(data.y_train)
    idx = np.random.default_rng(seed).permutation(n)[:max(1, min(samples, n))]
    return data.tensors("train", np.sort(idx))[0]


# --- runners ----------------------------------------------------------------------------------------------

class OrtRunner:
    """An ONNX Runtime ``InferenceSession`` on the CPU with the intra-op thread count fixed.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (default: torch's current count); inter-op is 1, execution sequential.
        runtime: Name recorded with latencies.
    """

    def __init__(self, path: str | Path, threads: int | None = None, runtime: str = "onnxruntime-int8-cpu") -> None:
        import onnxruntime as ort

        self.threads = int(threads or torch.get_num_threads())
        self.runtime = runtime
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict_logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits for normalised ``N×C×H×W`` inputs."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]


class TorchRunner:
    """A PyTorch module run in inference mode with the thread count fixed during each call."""

    def __init__(self, module: nn.Module, threads: int | None = None, runtime: str = "pytorch-fx-int8-cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.module = module.eval()
        self.threads = int(threads or torch.get_num_threads())
        self.runtime = runtime
        self.dtype = dtype

    def predict_logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        t = torch.as_tensor(np.asarray(x, np.float32)) if not isinstance(x, torch.Tensor) else x.detach().cpu()
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                return self.module(t.to(self.dtype)).float().numpy()
        finally:
            torch.set_num_threads(old)


class RuntimeModule(nn.Module):
    """A module whose forward runs a real runtime (int8 ONNX Runtime or FX); ``float_model`` is kept for counts.

    Its outputs are the runtime's; it cannot be trained. ``runner`` is the object used for latency. Under
    :func:`nnlab.measure.count_macs` the float model runs instead: the int8 graph
    performs the same multiply-accumulates, and the runtime's kernels are invisible to PyTorch's counter.
    """

    def __init__(self, runner: Any, float_model: nn.Module | None = None) -> None:
        super().__init__()
        self.runner = runner
        self.float_model = float_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_model is not None and counting_macs():
            return self.float_model(x)
        return torch.from_numpy(np.asarray(self.runner.predict_logits(x), np.float32)).to(x.device)

    def __deepcopy__(self, memo: dict) -> RuntimeModule:
        """Copies share the runner (a read-only inference session) and copy the float model."""
        return RuntimeModule(self.runner, copy.deepcopy(self.float_model, memo))


# --- ONNX Runtime -----------------------------------------------------------------------------------------

def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, exporter: str = "dynamo",
                opset: int = 18) -> str:
    """Export ``model`` (eval mode, on the CPU) to ONNX with a dynamic batch axis named ``input``/``logits``.

    ``exporter`` "dynamo" uses the torch.export-based exporter; "torchscript" the legacy one. When the chosen
    one fails the other is tried. Returns the exporter that produced the file.
    """
    model = model.cpu().eval()
    x = torch.zeros(2, *input_shape)
    order = [exporter] + [e for e in EXPORTERS if e != exporter]
    errors = []
    for name in order:
        try:
            with atomic_path(Path(path)) as tmp, warnings.catch_warnings(), _quiet():
                warnings.simplefilter("ignore")
                if name == "dynamo":
                    torch.onnx.export(model, (x,), str(tmp), dynamo=True, opset_version=opset, external_data=False,
                                      input_names=["input"], output_names=["logits"], verbose=False,
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
                else:
                    torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=17,
                                      input_names=["input"], output_names=["logits"],
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            strip_onnx(path)
            return name
        except Exception as exc:  # noqa: BLE001 - try the other exporter, report both if neither works
            errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
    raise RuntimeError("the model could not be exported to ONNX (" + "; ".join(errors) + ")")


def strip_onnx(path: str | Path) -> None:
    """Drop per-node debug metadata (source locations the exporter adds) so file sizes count the model only."""
    import onnx

    model = onnx.load(str(path))
    for graph in [model.graph, *(a.g for n in model.graph.node for a in n.attribute if a.g.node)]:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    with atomic_path(Path(path)) as tmp:
        onnx.save(model, str(tmp))


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' and the quantizer's chatter (stdout prints and root-logger warnings)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _reader(batches: list[np.ndarray], input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict | None:
            b = next(self._it, None)
            return None if b is None else {input_name: b}

        def rewind(self) -> None:
            self._it = iter(batches)

    return Reader()


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calib: torch.Tensor | np.ndarray | None,
                  mode: str = "static", per_channel: bool = True, quant_format: str = "qdq",
                  calibrate_method: str = "minmax", preprocess: bool = True, batch_size: int = 32) -> None:
    """Quantize an fp32 ONNX file with ONNX Runtime (static with calibration, or dynamic) into ``out_path``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = Path(fp32_path)
    out_path = Path(out_path)
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if preprocess:
            pre = src.with_name(src.stem + ".pre.onnx")
            quant_pre_process(str(src), str(pre))
            src = pre
        with atomic_path(out_path) as tmp:
            if mode == "dynamic":
                quantize_dynamic(str(src), str(tmp), per_channel=per_channel, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"])
            else:
                if calib is None or len(calib) == 0:
                    raise ValueError("static quantization needs calibration samples")
                arr = calib.numpy() if isinstance(calib, torch.Tensor) else np.asarray(calib)
                arr = np.ascontiguousarray(arr, dtype=np.float32)
                batches = [arr[i:i + batch_size] for i in range(0, len(arr), batch_size)]
                method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[calibrate_method]
                quantize_static(str(src), str(tmp), _reader(batches, "input"),
                                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                                per_channel=per_channel, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=method,
                                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    if preprocess:
        src.unlink(missing_ok=True)
    strip_onnx(out_path)


# --- torch.ao FX ------------------------------------------------------------------------------------------

def _fx_prepare(model: nn.Module, example: torch.Tensor, mode: str, per_channel: bool, backend: str) -> nn.Module:
    from torch.ao.quantization import QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.qconfig import default_dynamic_qconfig, per_channel_dynamic_qconfig
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = backend if backend in torch.backends.quantized.supported_engines else "fbgemm"
    if mode == "dynamic":
        # FX's fusion check refuses Linear-only dynamic qconfigs next to fused Conv/Linear+ReLU patterns;
        # torch.ao's module-swapping quantize_dynamic does the same job (int8 Linear, run-time activation ranges)
        from torch.ao.quantization import quantize_dynamic

        qc = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize_dynamic(model.cpu().eval(), {nn.Linear: qc}, inplace=False)
    mapping = get_default_qconfig_mapping(backend)
    if not per_channel:
        from torch.ao.quantization import get_default_qconfig

        mapping = QConfigMapping().set_global(get_default_qconfig(backend))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_fx(model.cpu().eval(), mapping, (example,))


def quantize_fx(model: nn.Module, calib: torch.Tensor | None, mode: str = "static", per_channel: bool = True,
                backend: str = "x86", batch_size: int = 64) -> nn.Module:
    """torch.ao FX graph mode: prepare, calibrate on ``calib`` (static), convert. ``model`` is changed: pass a copy."""
    from torch.ao.quantization.quantize_fx import convert_fx

    example = calib[:1] if calib is not None and len(calib) else None
    if example is None:
        raise ValueError("FX quantization needs at least one example input")
    try:
        prepared = _fx_prepare(model, example, mode, per_channel, backend)
    except Exception as exc:  # noqa: BLE001 - e.g. symbolic tracing fails on data-dependent control flow
        raise ValueError(f"torch.ao FX could not prepare this model ({type(exc).__name__}: {str(exc)[:160]}); "
                         "use the onnxruntime backend") from exc
    if mode == "dynamic":
        return prepared.eval()  # already converted (see _fx_prepare)
    with torch.inference_mode():
        for i in range(0, len(calib), batch_size):
            prepared(calib[i:i + batch_size])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared).eval()


# --- the method -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Int8Config(MethodConfig):
    """Post-training int8 quantization executed in a real int8 runtime."""

    method: ClassVar[str] = "int8"
    label: ClassVar[str] = "Int8 post-training quantization (real int8 runtime)"
    family: ClassVar[str] = "quantization"
    description: ClassVar[str] = ("Weights int8 and activations uint8 calibrated on training samples (static), or "
                                  "int8 Linear weights with run-time activation ranges (dynamic); run by ONNX "
                                  "Runtime or torch.ao FX.")

    backend: str = field(default="onnxruntime", metadata={"help": "Runtime that executes the int8 model",
                                                          "choices": BACKENDS})
    mode: str = field(default="static", metadata={"help": "Static: calibrated activations; dynamic: Linear only",
                                                  "choices": MODES})
    calibration_samples: int = field(default=256, metadata={"help": "Training samples used to calibrate "
                                                            "activation ranges (static)", "min": 1, "max": 10000})
    per_channel: bool = field(default=True, metadata={"help": "One weight scale per output channel"})
    quant_format: str = field(default="qdq", metadata={"help": "ONNX graph format: QuantizeLinear/DequantizeLinear "
                                                       "pairs or QLinear operators", "choices": FORMATS})
    calibrate_method: str = field(default="minmax", metadata={"help": "How ONNX Runtime picks activation ranges",
                                                              "choices": CALIBRATIONS})
    exporter: str = field(default="dynamo", metadata={"help": "torch.onnx exporter (the other one is the fallback)",
                                                      "choices": EXPORTERS})
    threads: int = field(default=0, metadata={"help": "Runtime threads (0: PyTorch's current setting)",
                                              "min": 0, "max": 256})

    def __post_init__(self) -> None:
        check_choice(self, "backend", BACKENDS)
        check_choice(self, "mode", MODES)
        check_range(self, "calibration_samples", 1, 100000)
        check_choice(self, "quant_format", FORMATS)
        check_choice(self, "calibrate_method", CALIBRATIONS)
        check_choice(self, "exporter", EXPORTERS)
        check_range(self, "threads", 0, 256)


def quantized_layer_rows(model: nn.Module, cfg: Int8Config) -> list[dict]:
    """Per-layer bit-widths: Conv/Linear weights int8 (dynamic mode: Linear only)."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            int8 = cfg.mode == "static" or isinstance(m, nn.Linear)
            rows.append({"name": name, "bits": 8 if int8 else 32, "quantized": int8,
                         "activations": "uint8" if cfg.mode == "static" else ("dynamic" if int8 else "fp32")})
    return rows


def to_int8(model: nn.Module, data: ImageDataset, cfg: Int8Config, workdir: Path,
            calib: torch.Tensor | None = None, seed: int = 0) -> CompressResult:
    """Quantize ``model`` (changed in place: pass a copy) to real int8 and write the artifact into ``workdir``."""
    model = model.cpu().eval()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if calib is None:
        calib = calibration_inputs(data, cfg.calibration_samples, seed)
    threads = cfg.threads or torch.get_num_threads()
    reference = copy.deepcopy(model)
    rows = quantized_layer_rows(model, cfg)
    extra: dict[str, Any] = {"backend": cfg.backend, "mode": cfg.mode, "calibration_samples": int(len(calib))}
    if cfg.backend == "onnxruntime":
        fp32 = workdir / "model.fp32.onnx"
        extra["exporter"] = export_onnx(model, data.input_shape, fp32, cfg.exporter)
        path = workdir / "model.int8.onnx"
        quantize_onnx(fp32, path, calib, cfg.mode, cfg.per_channel, cfg.quant_format, cfg.calibrate_method)
        extra["fp32_onnx_bytes"] = fp32.stat().st_size
        fp32.unlink()
        runner: Any = OrtRunner(path, threads, f"onnxruntime-int8-{cfg.mode}-cpu")
        fmt = ONNX_FORMAT
    else:
        qmodel = quantize_fx(model, calib, cfg.mode, cfg.per_channel)
        path = workdir / "model.int8.pt"
        with atomic_path(path) as tmp:
            torch.save(qmodel.state_dict(), tmp)
        runner = TorchRunner(qmodel, threads, f"pytorch-fx-int8-{cfg.mode}-cpu")
        fmt = FX_FORMAT
    extra["threads"] = threads
    with torch.inference_mode():
        x = calib[: min(len(calib), 256)]
        ref_logits = reference(x).numpy()
    test_logits = runner.predict_logits(x)
    extra["calibration_sqnr_db"] = round(sqnr_db(ref_logits, test_logits), 2)
    extra["calibration_top1_agreement"] = round(top1_agreement(ref_logits, test_logits), 4)
    return CompressResult(model=RuntimeModule(runner, reference), layers=rows, artifact=path, artifact_format=fmt,
                          runner=runner, extra=extra)


@register(Int8Config)
def int8_handler(model: nn.Module, cfg: Int8Config, ctx: CompressContext) -> CompressResult:
    """Static or dynamic int8 post-training quantization through ONNX Runtime or torch.ao FX."""
    ctx.report(f"int8 ({cfg.backend}, {cfg.mode}): calibrating on {cfg.calibration_samples} samples", 0.1)
    ctx.check_cancel()
    result = to_int8(model, ctx.data, cfg, ctx.workdir, seed=ctx.seed)
    ctx.report("int8 model ready", 1.0)
    return result


# --- loading artifacts back -------------------------------------------------------------------------------

def _config_of(record: Any) -> Int8Config:
    d = dict(getattr(record, "config", {}) or {})
    steps = d.get("steps")
    if steps:
        d = dict(steps[-1])
    d.pop("method", None)
    known = {f for f in Int8Config.__dataclass_fields__}
    return Int8Config(**{k: v for k, v in d.items() if k in known})


def load_onnx_int8(path: Path, template: nn.Module, record: Any = None, threads: int | None = None) -> CompressResult:
    """An int8 ``.onnx`` artifact back as a runner (the graph is self-contained; ``template`` is kept for counts)."""
    runner = OrtRunner(path, threads)
    return CompressResult(model=RuntimeModule(runner, template.eval()), runner=runner, artifact=Path(path),
                          artifact_format=ONNX_FORMAT)


def load_fx_int8(path: Path, template: nn.Module, record: Any = None, threads: int | None = None) -> CompressResult:
    """An FX int8 state dict back: the template is prepared and converted the same way, then loaded."""
    cfg = _config_of(record) if record is not None else Int8Config(backend="torch-fx")
    shape = (getattr(record, "extra", {}) or {}).get("input_shape") if record is not None else None
    example = torch.zeros(1, *shape) if shape else None
    if example is None:
        raise ValueError("loading an FX int8 artifact needs the record's input_shape")
    reference = copy.deepcopy(template).eval()
    prepared = _fx_prepare(template, example, cfg.mode, cfg.per_channel, "x86")
    from torch.ao.quantization.quantize_fx import convert_fx

    if cfg.mode == "dynamic":
        qmodel = prepared
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared(example)
            qmodel = convert_fx(prepared)
    qmodel.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    runner = TorchRunner(qmodel, threads, f"pytorch-fx-int8-{cfg.mode}-cpu")
    return CompressResult(model=RuntimeModule(runner, reference), runner=runner, artifact=Path(path),
                          artifact_format=FX_FORMAT)


register_loader(ONNX_FORMAT, load_onnx_int8)
register_loader(FX_FORMAT, load_fx_int8)
