"""Real int8 execution: post-training quantization run by an int8 runtime, not simulated.

Backends, chosen in the config:

- ``auto`` (default): every available maintained int8 backend (OpenVINO + NNCF, ONNX Runtime) quantizes the
  model, each result is timed interleaved on this machine at batch 1 with the thread count fixed, and the
  fastest is kept (:func:`nnlab.runtimes.select.select`; the choice is cached per model content, input
  shape, threads and settings, so a second run quantizes once). A backend whose int8 logits on the
  calibration samples are more than :data:`MIN_SQNR_DB` away from the float model's is never chosen. The
  choice and every candidate's figures go into the record's ``extra["runtime_choice"]``.
- ``openvino``: the float model is converted to OpenVINO (``ov.convert_model``) and quantized by NNCF
  (``nncf.quantize``: int8 weights and activations, statistics on training samples, fast bias correction;
  preset and ignored scopes exposed; optionally ``nncf.quantize_with_accuracy_control`` with a maximum
  drop on held-out training samples). The artifact is the IR (``.xml`` + ``.bin``, float weights kept in
  fp32), reloaded from disk by the runner used for evaluation and latency.
- ``onnxruntime``: exported to ONNX, pre-processed, quantized by ONNX Runtime (static with calibration,
  QDQ or QOperator, or dynamic: int8 Linear weights only); the artifact is the int8 ``.onnx`` file.
- ``torch-fx``: torch.ao FX graph mode (x86 backend), deprecated upstream; offered only while torch ships
  it and never chosen by ``auto``. The artifact is the quantized state dict.

torchao's pt2e flow is not offered: see :mod:`nnlab.runtimes` for why it does not run here.

The returned model is a :class:`RuntimeModule`: its forward runs the int8 runtime, so any PyTorch caller gets
the real int8 outputs; it keeps the float model as ``float_model`` for parameter counts and MACs.

Nothing here changes process-wide state: no logger levels, redirected stdout, warning filters or
``torch.backends.quantized.engine`` (FX reads the engine PyTorch already uses).
"""

from __future__ import annotations

import copy
import importlib.util
import json
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
from nnlab.data.sets import ImageDataset
from nnlab.i18n import N_, _
from nnlab.measure import counting_macs
from nnlab.runtimes import openvino as ovr
from nnlab.runtimes.base import sqnr_db, top1_agreement
from nnlab.runtimes.onnx import EXPORTERS, OrtRunner, export_onnx, quantize_onnx, strip_onnx
from nnlab.runtimes.select import Selection, model_key, select
from nnlab.runtimes.torch_eager import TorchRunner
from nnlab.workspace import atomic_path

__all__ = ["BACKENDS", "Int8Config", "OrtRunner", "RuntimeModule", "TorchRunner", "calibration_inputs",
           "export_onnx", "load_fx_int8", "load_onnx_int8", "load_openvino_int8", "quantize_fx", "quantize_onnx",
           "sqnr_db", "strip_onnx", "to_int8", "top1_agreement"]


def _fx_shipped() -> bool:
    return importlib.util.find_spec("torch.ao.quantization.quantize_fx") is not None


AUTO_CANDIDATES = tuple(b for b, ok in (("openvino", ovr.available()), ("onnxruntime", True)) if ok)
BACKENDS = ("auto", *AUTO_CANDIDATES) + (("torch-fx",) if _fx_shipped() else ())
MODES = ("static", "dynamic")
FORMATS = ("qdq", "qoperator")
CALIBRATIONS = ("minmax", "entropy", "percentile")
PRESETS = ovr.PRESETS
ONNX_FORMAT = "onnx-int8"
FX_FORMAT = "torch-fx-int8"
OPENVINO_FORMAT = "openvino-ir-int8"
SELECT_ROUNDS = 5
MIN_SQNR_DB = 10.0  # auto never picks a backend whose int8 logits are further than this from the float model's


# --- data -------------------------------------------------------------------------------------------------

def _order(data: ImageDataset, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(len(data.y_train))


def calibration_inputs(data: ImageDataset, samples: int, seed: int = 0) -> torch.Tensor:
    """``samples`` normalised training images drawn at random (seeded) for activation calibration."""
    idx = _order(data, seed)[:max(1, min(samples, len(data.y_train)))]
    return data.tensors("train", np.sort(idx))[0]


def validation_inputs(data: ImageDataset, calibration: int, samples: int, seed: int = 0) -> tuple[torch.Tensor,
                                                                                                    np.ndarray]:
    """Labelled training images not used for calibration (accuracy control); the test split stays unseen."""
    order = _order(data, seed)
    idx = order[calibration:calibration + samples]
    if len(idx) == 0:  # a tiny training split: reuse calibration images rather than none
        idx = order[:samples]
    x, y = data.tensors("train", np.sort(idx))
    return x, y.numpy()


# --- the runtime-backed module ----------------------------------------------------------------------------

class RuntimeModule(nn.Module):
    """A module whose forward runs a real runtime (OpenVINO, ONNX Runtime or FX int8); ``float_model`` is kept.

    Its outputs are the runtime's; it cannot be trained. ``runner`` is the object used for latency. Under
    :func:`nnlab.measure.count_macs` the float model runs instead: the int8 graph performs the same
    multiply-accumulates, and the runtime's kernels are invisible to PyTorch's counter.
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


# --- torch.ao FX ------------------------------------------------------------------------------------------

def _fx_engine() -> str:
    """The quantized engine PyTorch already uses (read, never set: it is process-wide)."""
    engine = torch.backends.quantized.engine
    return engine if engine in ("x86", "fbgemm", "onednn", "qnnpack") else "x86"


def _fx_prepare(model: nn.Module, example: torch.Tensor, mode: str, per_channel: bool) -> nn.Module:
    from torch.ao.quantization import QConfigMapping, get_default_qconfig, get_default_qconfig_mapping
    from torch.ao.quantization.qconfig import default_dynamic_qconfig, per_channel_dynamic_qconfig
    from torch.ao.quantization.quantize_fx import prepare_fx

    engine = _fx_engine()
    if mode == "dynamic":
        # FX's fusion check refuses Linear-only dynamic qconfigs next to fused Conv/Linear+ReLU patterns;
        # torch.ao's module-swapping quantize_dynamic does the same job (int8 Linear, run-time activation ranges)
        from torch.ao.quantization import quantize_dynamic

        qc = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        return quantize_dynamic(model.cpu().eval(), {nn.Linear: qc}, inplace=False)
    mapping = get_default_qconfig_mapping(engine) if per_channel else \
        QConfigMapping().set_global(get_default_qconfig(engine))
    return prepare_fx(model.cpu().eval(), mapping, (example,))


def quantize_fx(model: nn.Module, calib: torch.Tensor | None, mode: str = "static", per_channel: bool = True,
                batch_size: int = 64) -> nn.Module:
    """torch.ao FX graph mode: prepare, calibrate on ``calib`` (static), convert. ``model`` is changed: pass a copy."""
    from torch.ao.quantization.quantize_fx import convert_fx

    example = calib[:1] if calib is not None and len(calib) else None
    if example is None:
        raise ValueError(_("FX quantization needs at least one example input"))
    try:
        prepared = _fx_prepare(model, example, mode, per_channel)
    except Exception as exc:  # noqa: BLE001 - e.g. symbolic tracing fails on data-dependent control flow
        raise ValueError(_("torch.ao FX could not prepare this model ({error}: {detail}); use the openvino or "
                           "onnxruntime backend").format(error=type(exc).__name__, detail=str(exc)[:160])) from exc
    if mode == "dynamic":
        return prepared.eval()  # already converted (see _fx_prepare)
    with torch.inference_mode():
        for i in range(0, len(calib), batch_size):
            prepared(calib[i:i + batch_size])
    return convert_fx(prepared).eval()


# --- the method -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Int8Config(MethodConfig):
    """Post-training int8 quantization executed in a real int8 runtime."""

    method: ClassVar[str] = "int8"
    label: ClassVar[str] = N_("Int8 post-training quantization (real int8 runtime)")
    family: ClassVar[str] = "quantization"
    description: ClassVar[str] = (N_("Weights int8 and activations int8/uint8 calibrated on training samples (static), "
                                  "or int8 Linear weights with run-time activation ranges (dynamic); run by "
                                  "OpenVINO (NNCF), ONNX Runtime or torch.ao FX — by default the fastest of them "
                                  "measured on this machine."))

    backend: str = field(default="auto", metadata={"help": N_("Runtime that executes the int8 model (auto: the "
                                                           "fastest measured here)"), "choices": BACKENDS})
    mode: str = field(default="static", metadata={"help": N_("Static: calibrated activations; dynamic: Linear only "
                                                          "(ONNX Runtime, torch-fx)"), "choices": MODES})
    calibration_samples: int = field(default=256, metadata={"help": N_("Training samples used to calibrate "
                                                            "activation ranges (static)"), "min": 1, "max": 10000})
    per_channel: bool = field(default=True, metadata={"help": N_("One weight scale per output channel (ONNX Runtime, "
                                                              "torch-fx; NNCF always uses per-channel weights)")})
    quant_format: str = field(default="qdq", metadata={"help": N_("ONNX graph format: QuantizeLinear/DequantizeLinear "
                                                       "pairs or QLinear operators"), "choices": FORMATS})
    calibrate_method: str = field(default="minmax", metadata={"help": N_("How ONNX Runtime picks activation ranges"),
                                                              "choices": CALIBRATIONS})
    exporter: str = field(default="dynamo", metadata={"help": N_("torch.onnx exporter (the other one is the fallback)"),
                                                      "choices": EXPORTERS})
    preset: str = field(default="performance", metadata={"help": N_("NNCF preset: performance (symmetric activations) "
                                                         "or mixed (asymmetric activations)"), "choices": PRESETS})
    ignored_types: str = field(default="", metadata={"help": N_("NNCF: OpenVINO op types left in float, comma-"
                                                             "separated (e.g. 'Add,MatMul')")})
    ignored_patterns: str = field(default="", metadata={"help": N_("NNCF: regular expressions of node names left in "
                                                                "float, comma-separated (e.g. '.*fc.*')")})
    ignored_layers: str = field(default="", metadata={"help": N_("Layers left in float, PyTorch names comma-separated "
                                                              "(ONNX Runtime: nodes_to_exclude; NNCF: ignored "
                                                              "scope by name); e.g. what a repair puts back")})
    fast_bias_correction: bool = field(default=True, metadata={"help": N_("NNCF: fast bias correction (else the "
                                                                       "slower full one)")})
    accuracy_control: bool = field(default=False, metadata={"help": N_("NNCF: quantize with accuracy control (layers "
                                                                    "return to float until the drop is within "
                                                                    "max_drop on held-out training samples)")})
    max_drop: float = field(default=0.01, metadata={"help": N_("Accuracy control: largest top-1 drop (fraction: 0.01 = "
                                                            "1 point)"), "min": 0.0, "max": 1.0})
    validation_samples: int = field(default=300, metadata={"help": N_("Accuracy control: held-out training samples "
                                                           "that judge the drop"), "min": 10, "max": 10000})
    threads: int = field(default=0, metadata={"help": N_("Runtime threads (0: PyTorch's current setting)"),
                                              "min": 0, "max": 256})

    def __post_init__(self) -> None:
        check_choice(self, "backend", BACKENDS)
        check_choice(self, "mode", MODES)
        check_range(self, "calibration_samples", 1, 100000)
        check_choice(self, "quant_format", FORMATS)
        check_choice(self, "calibrate_method", CALIBRATIONS)
        check_choice(self, "exporter", EXPORTERS)
        check_choice(self, "preset", PRESETS)
        check_range(self, "max_drop", 0.0, 1.0)
        check_range(self, "validation_samples", 1, 100000)
        check_range(self, "threads", 0, 256)
        if self.backend == "openvino" and self.mode != "static":
            raise ValueError(_("{method}: the openvino backend (NNCF) quantizes statically; use mode=static or "
                               "another backend for dynamic quantization").format(method=self.method))
        if self.accuracy_control and self.backend not in ("openvino", "auto"):
            raise ValueError(_("{method}: accuracy control is NNCF's (backend openvino)").format(method=self.method))


def split_layers(text: str) -> list[str]:
    """Layer names from a comma-separated setting (blanks dropped, order kept)."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


WEIGHTED_ONNX_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
WEIGHTED_OV_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
_DQ_OUT = "_DequantizeLinear_Output"


def onnx_layer_of(node: Any) -> str | None:
    """The PyTorch layer an ONNX Conv/Gemm/MatMul node computes, or None.

    Found by its weight's initializer name (``conv1.weight``, in a float graph or behind a DequantizeLinear in a
    QDQ graph), else by the TorchScript exporter's node naming (``/layer1/layer1.0/conv1/Conv``).
    """
    if node.op_type not in WEIGHTED_ONNX_OPS or len(node.input) < 2:
        return None
    w = node.input[1]
    w = w[: -len(_DQ_OUT)] if w.endswith(_DQ_OUT) else w
    if w.endswith(".weight"):
        return w[: -len(".weight")]
    parts = [p for p in node.name.split("/") if p]
    if len(parts) < 2:
        return None
    leaf = parts[-2]  # "/layer1/layer1.0/conv1/Conv": the leaf is conv1 in layer1.0
    return leaf if "." in leaf or len(parts) < 3 else f"{parts[-3]}.{leaf}"


def onnx_layer_nodes(graph: Any) -> dict[str, str]:
    """PyTorch layer name → name of the ONNX node that computes it (graph order) in ``graph`` (an ONNX
    GraphProto, float or QDQ)."""
    out: dict[str, str] = {}
    for node in graph.node:
        layer = onnx_layer_of(node)
        if layer and layer not in out:
            out[layer] = node.name
    return out


def ov_layer_of(name: str) -> str | None:
    """The PyTorch layer of an OpenVINO node converted from PyTorch (``__module.conv1/aten::_convolution/…``)."""
    head = name.split("/", 1)[0]
    return head[len("__module."):] if head.startswith("__module.") else None


def ov_layer_nodes(model: Any) -> dict[str, str]:
    """PyTorch layer name → friendly name of the OpenVINO Convolution/MatMul node computing it (graph order)."""
    out: dict[str, str] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in WEIGHTED_OV_OPS:
            layer = ov_layer_of(op.get_friendly_name())
            if layer and layer not in out:
                out[layer] = op.get_friendly_name()
    return out


def _nodes_for(layers: list[str], nodes: dict[str, str], runtime: str) -> list[str]:
    missing = [la for la in layers if la not in nodes]
    if missing:
        raise ValueError(f"no {runtime} node computes the layer(s) {', '.join(missing)} "
                         f"(known: {', '.join(list(nodes)[:12])})")
    return [nodes[la] for la in layers]


def quantized_layer_rows(model: nn.Module, cfg: Int8Config) -> list[dict]:
    """Per-layer bit-widths: Conv/Linear weights int8 (dynamic mode: Linear only; ``ignored_layers`` fp32)."""
    rows = []
    kept = set(split_layers(cfg.ignored_layers))
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            int8 = (cfg.mode == "static" or isinstance(m, nn.Linear)) and name not in kept
            rows.append({"name": name, "bits": 8 if int8 else 32, "quantized": int8,
                         "activations": "int8" if cfg.mode == "static" else ("dynamic" if int8 else "fp32")})
    return rows


@dataclass
class _Built:
    runner: Any
    path: Path
    fmt: str
    files: list[Path]
    extra: dict


def _build(backend: str, model: nn.Module, data: ImageDataset, cfg: Int8Config, workdir: Path,
           calib: torch.Tensor, threads: int, seed: int) -> _Built:
    """Quantize ``model`` (not changed) with one backend, write its artifact into ``workdir``, return its runner."""
    extra: dict[str, Any] = {}
    if backend == "onnxruntime":
        fp32 = workdir / "model.fp32.onnx"
        try:
            extra["exporter"] = export_onnx(model, data.input_shape, fp32, cfg.exporter)
            path = workdir / "model.int8.onnx"
            exclude = []
            if cfg.ignored_layers:
                import onnx

                exclude = _nodes_for(split_layers(cfg.ignored_layers), onnx_layer_nodes(onnx.load(str(fp32)).graph),
                                     "ONNX")
                extra["nodes_to_exclude"] = exclude
            quantize_onnx(fp32, path, calib, cfg.mode, cfg.per_channel, cfg.quant_format, cfg.calibrate_method,
                          nodes_to_exclude=exclude)
            extra["fp32_onnx_bytes"] = fp32.stat().st_size
        finally:
            fp32.unlink(missing_ok=True)
        return _Built(OrtRunner(path, threads, f"onnxruntime-int8-{cfg.mode}-cpu"), path, ONNX_FORMAT, [path], extra)
    if backend == "openvino":
        fp32 = ovr.convert(model, data.input_shape)
        names = _nodes_for(split_layers(cfg.ignored_layers), ov_layer_nodes(fp32), "OpenVINO")
        if names:
            extra["ignored_nodes"] = names
        scope = ovr.ignored_scope(names=",".join(names), patterns=cfg.ignored_patterns, types=cfg.ignored_types)
        if cfg.accuracy_control:
            vx, vy = validation_inputs(data, len(calib), cfg.validation_samples, seed)
            q = ovr.quantize_with_accuracy_control(fp32, calib, vx, vy, cfg.max_drop, cfg.preset, scope,
                                                   cfg.fast_bias_correction)
            extra["validation_samples"] = int(len(vy))
        else:
            q = ovr.quantize(fp32, calib, cfg.preset, scope, cfg.fast_bias_correction)
        xml, binf = ovr.save_ir(q, workdir / "model.int8.xml")
        # the runner reloads the saved IR: what is evaluated and timed is the artifact on disk
        runner = ovr.OpenVINORunner(xml, threads, "f32", "openvino-int8-cpu")
        return _Built(runner, xml, OPENVINO_FORMAT, [xml, binf], extra)
    if backend == "torch-fx":
        qmodel = quantize_fx(copy.deepcopy(model), calib, cfg.mode, cfg.per_channel)
        path = workdir / "model.int8.pt"
        with atomic_path(path) as tmp:
            torch.save(qmodel.state_dict(), tmp)
        return _Built(TorchRunner(qmodel, threads, f"pytorch-fx-int8-{cfg.mode}-cpu"), path, FX_FORMAT, [path], extra)
    raise ValueError(_("unknown int8 backend {backend!r}").format(backend=backend))


def _auto(model: nn.Module, data: ImageDataset, cfg: Int8Config, workdir: Path, calib: torch.Tensor,
          threads: int, seed: int, reference: np.ndarray,
          x_ref: torch.Tensor) -> tuple[_Built, Selection, np.ndarray | None]:
    """Quantize with every candidate backend, time them interleaved, keep the fastest (cached per model).

    Also returns the chosen runner's logits on ``x_ref`` from its fidelity check (None if it was not checked).
    """
    candidates = [b for b in AUTO_CANDIDATES if cfg.mode == "static" or b != "openvino"]
    if cfg.accuracy_control:
        candidates = [b for b in candidates if b == "openvino"]
    if not candidates:
        raise ValueError(_("no int8 backend is available for these settings"))
    built: dict[str, _Built] = {}
    outputs: dict[str, np.ndarray] = {}  # each checked runner's logits on x_ref

    def factory(b: str) -> Any:
        def make() -> Any:
            built[b] = _build(b, model, data, cfg, workdir, calib, threads, seed)
            return built[b].runner
        return make

    def check(name: str, runner: Any) -> tuple[bool, dict]:
        out = outputs[name] = np.asarray(runner.predict_logits(x_ref), np.float32)
        sqnr = sqnr_db(reference, out)
        facts = {"calibration_top1_agreement": round(top1_agreement(reference, out), 4),
                 "calibration_sqnr_db": round(sqnr, 2)}
        if not np.isfinite(out).all():
            return False, {**facts, "note": "non-finite outputs"}
        if sqnr < MIN_SQNR_DB:  # e.g. logits collapsed to zero: fast, but not the model any more
            return False, {**facts, "note": f"SQNR {sqnr:.1f} dB on the calibration samples, below the "
                                            f"{MIN_SQNR_DB:g} dB floor"}
        return True, {**facts, "note": ""}

    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("backend", "threads")}
    key = model_key(model, data.input_shape, threads, 1, "int8:" + json.dumps(settings, sort_keys=True)
                    + ":" + ",".join(candidates))
    x = np.random.default_rng(seed).standard_normal((1, *data.input_shape)).astype(np.float32)
    sel = select({b: factory(b) for b in candidates}, x, threads, key=key, rounds=SELECT_ROUNDS, check=check)
    keep = built[sel.choice]
    for b, other in built.items():  # the losers' artifacts go
        if b != sel.choice:
            for f in other.files:
                f.unlink(missing_ok=True)
    return keep, sel, outputs.get(sel.choice)


def to_int8(model: nn.Module, data: ImageDataset, cfg: Int8Config, workdir: Path,
            calib: torch.Tensor | None = None, seed: int = 0) -> CompressResult:
    """Quantize ``model`` to real int8 and write the artifact into ``workdir`` (``model`` is not changed)."""
    model = copy.deepcopy(model).cpu().eval()  # the builders copy again where they edit; this one is kept
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if calib is None:
        calib = calibration_inputs(data, cfg.calibration_samples, seed)
    threads = cfg.threads or torch.get_num_threads()
    reference_model = model
    rows = quantized_layer_rows(model, cfg)
    x_ref = calib[: min(len(calib), 256)]
    with torch.inference_mode():
        ref_logits = reference_model(x_ref).numpy()
    extra: dict[str, Any] = {"mode": cfg.mode, "calibration_samples": int(len(calib)), "threads": threads}
    test_logits = None
    if cfg.backend == "auto":
        b, sel, test_logits = _auto(model, data, cfg, workdir, calib, threads, seed, ref_logits, x_ref)
        extra["runtime_choice"] = {**sel.to_dict(), "summary": sel.summary()}
        extra["backend"] = sel.choice
    else:
        b = _build(cfg.backend, model, data, cfg, workdir, calib, threads, seed)
        extra["backend"] = cfg.backend
    extra.update(b.extra)
    if test_logits is None:
        test_logits = b.runner.predict_logits(x_ref)
    extra["calibration_sqnr_db"] = round(sqnr_db(ref_logits, test_logits), 2)
    extra["calibration_top1_agreement"] = round(top1_agreement(ref_logits, test_logits), 4)
    return CompressResult(model=RuntimeModule(b.runner, reference_model), layers=rows, artifact=b.path,
                          artifact_format=b.fmt, runner=b.runner, extra=extra)


@register(Int8Config)
def int8_handler(model: nn.Module, cfg: Int8Config, ctx: CompressContext) -> CompressResult:
    """Static or dynamic int8 post-training quantization through OpenVINO/NNCF, ONNX Runtime or torch.ao FX."""
    ctx.report(_("int8 ({backend}, {mode}): calibrating on {calibration_samples} samples").format(
        backend=cfg.backend, mode=cfg.mode, calibration_samples=cfg.calibration_samples), 0.1)
    ctx.check_cancel()
    result = to_int8(model, ctx.data, cfg, ctx.workdir, seed=ctx.seed)
    ctx.report(_("int8 model ready ({backend})").format(backend=result.extra['backend']), 1.0)
    return result


# --- loading artifacts back -------------------------------------------------------------------------------

def _config_of(record: Any) -> Int8Config:
    d = dict(getattr(record, "config", {}) or {})
    steps = d.get("steps")
    if steps:
        d = dict(steps[-1])
    d.pop("method", None)
    known = set(Int8Config.__dataclass_fields__)
    d = {k: v for k, v in d.items() if k in known}
    if d.get("backend") not in BACKENDS:  # e.g. a record written when the chosen backend was stored elsewhere
        d.pop("backend", None)
    return Int8Config(**d)


def _threads_of(record: Any, threads: int | None) -> int | None:
    """The thread count asked for, else the one the record was measured with, else None (PyTorch's)."""
    if threads or record is None:
        return threads
    extra = getattr(record, "extra", {}) or {}
    steps = [st.get("extra", {}) for st in extra.get("steps", []) if isinstance(st, dict)]
    return next((e[k] for e in (extra, *reversed(steps)) for k in ("latency_threads", "threads") if e.get(k)), None)


def load_onnx_int8(path: Path, template: nn.Module, record: Any = None, threads: int | None = None) -> CompressResult:
    """An int8 ``.onnx`` artifact back as a runner (the graph is self-contained; ``template`` is kept for counts)."""
    runner = OrtRunner(path, _threads_of(record, threads))
    return CompressResult(model=RuntimeModule(runner, template.eval()), runner=runner, artifact=Path(path),
                          artifact_format=ONNX_FORMAT)


def load_openvino_int8(path: Path, template: nn.Module, record: Any = None,
                       threads: int | None = None) -> CompressResult:
    """An OpenVINO int8 IR (``.xml`` + ``.bin``) back as a runner compiled from the files."""
    runner = ovr.OpenVINORunner(Path(path), _threads_of(record, threads), "f32", "openvino-int8-cpu")
    return CompressResult(model=RuntimeModule(runner, template.eval()), runner=runner, artifact=Path(path),
                          artifact_format=OPENVINO_FORMAT)


def load_fx_int8(path: Path, template: nn.Module, record: Any = None, threads: int | None = None) -> CompressResult:
    """An FX int8 state dict back: the template is prepared and converted the same way, then loaded."""
    from torch.ao.quantization.quantize_fx import convert_fx

    cfg = _config_of(record) if record is not None else Int8Config(backend="torch-fx")
    shape = (getattr(record, "extra", {}) or {}).get("input_shape") if record is not None else None
    if not shape:
        raise ValueError(_("loading an FX int8 artifact needs the record's input_shape"))
    example = torch.zeros(1, *shape)
    reference = copy.deepcopy(template).eval()
    prepared = _fx_prepare(template, example, cfg.mode, cfg.per_channel)
    if cfg.mode == "dynamic":
        qmodel = prepared
    else:
        prepared(example)
        qmodel = convert_fx(prepared)
    qmodel.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    runner = TorchRunner(qmodel, _threads_of(record, threads), f"pytorch-fx-int8-{cfg.mode}-cpu")
    return CompressResult(model=RuntimeModule(runner, reference), runner=runner, artifact=Path(path),
                          artifact_format=FX_FORMAT)


register_loader(ONNX_FORMAT, load_onnx_int8)
register_loader(OPENVINO_FORMAT, load_openvino_int8)
register_loader(FX_FORMAT, load_fx_int8)
