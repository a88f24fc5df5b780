"""ONNX export and ONNX Runtime: fp32 sessions and int8 (static QDQ/QOperator or dynamic) quantization.

- :func:`export_onnx` writes the float model with a dynamic batch axis (``input`` → ``logits``) with the
  torch.export-based exporter, falling back to the TorchScript one.
- :func:`quantize_onnx` quantizes such a file with ONNX Runtime: *static* (int8 weights per channel or per
  tensor, uint8 activations calibrated on samples, QDQ or QOperator graph) or *dynamic* (int8 Linear
  weights, activation ranges at run time).
- :class:`OrtRunner` executes a file in an ``InferenceSession`` on the CPU with intra-op threads fixed.

Nothing here changes process-wide state: no logger levels, no redirected stdout, no warning filters (the
exporters' and quantizer's own messages go where they always go).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnlab.i18n import _
from nnlab.runtimes.base import as_input
from nnlab.workspace import atomic_path

EXPORTERS = ("dynamo", "torchscript")


class OrtRunner:
    """An ONNX Runtime ``InferenceSession`` on the CPU with the intra-op thread count fixed.

    Args:
        path: The ``.onnx`` file (read once; the file may be removed afterwards).
        threads: Intra-op threads (default: torch's current count); inter-op is 1, execution sequential.
        runtime: Name recorded with latencies.
        spin: Let idle intra-op threads go on spinning after a call returns (ONNX Runtime's default). Off by
            default (``session.force_spinning_stop``): they spin while a call runs, which short operators
            need, and stop when it returns, so they do not take the cores of whatever runs next, another
            session's work or another runtime being timed (OpenVINO int8 right after ONNX Runtime int8,
            ResNet-18 at 224, 2 threads on 2 cores: 8.9 ms after spinning threads, 5.5 ms after stopped ones,
            5.0–5.4 ms alone; ONNX Runtime itself 6.0 against 5.9 ms). Parking the threads altogether
            (``allow_spinning`` 0) costs ONNX Runtime more (up to 1.6× on ResNet-18 int8 at 2 threads).
    """

    def __init__(self, path: str | Path, threads: int | None = None, runtime: str = "onnxruntime-int8-cpu",
                 spin: bool = False) -> None:
        import onnxruntime as ort

        self.threads = int(threads or torch.get_num_threads())
        self.runtime = runtime
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if not spin:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict_logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits for normalised ``N×C×H×W`` inputs."""
        return self.session.run(None, {self.input_name: as_input(x)})[0]


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, exporter: str = "dynamo",
                opset: int = 18) -> str:
    """Export a copy of ``model`` (eval mode, CPU) to ONNX with a dynamic batch axis named ``input``/``logits``.

    ``exporter`` "dynamo" uses the torch.export-based exporter; "torchscript" the legacy one. When the chosen
    one fails the other is tried. The caller's model is not touched. Returns the exporter that produced the
    file.
    """
    import copy

    model = copy.deepcopy(model).cpu().eval()
    x = torch.zeros(2, *input_shape)
    order = [exporter] + [e for e in EXPORTERS if e != exporter]
    errors = []
    for name in order:
        try:
            with atomic_path(Path(path)) as tmp:
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


def ort_fp32_runner(model: nn.Module, input_shape: tuple[int, ...], threads: int | None = None,
                    exporter: str = "torchscript") -> OrtRunner:
    """The float model exported to ONNX and run by ONNX Runtime (the file lives only while the session loads).

    The TorchScript exporter comes first here: it exports in a fraction of the torch.export-based one's time
    (0.6 s against 11.6 s for the demo CNN, 4.5 s against 16.7 s for ResNet-18 at 224, on this project's
    loaded 2-core machine), and a runtime chosen for fp32 work is checked against PyTorch before use anyway
    (:func:`nnlab.runtimes.select.fastest_fp32_runner`). The other exporter is the fallback.
    """
    with tempfile.TemporaryDirectory(prefix="nnlab-ort-") as d:
        path = Path(d) / "model.onnx"
        export_onnx(model, input_shape, path, exporter)
        return OrtRunner(path, threads, "onnxruntime-fp32-cpu")


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
                  calibrate_method: str = "minmax", preprocess: bool = True, batch_size: int = 32,
                  nodes_to_exclude: list[str] | None = None) -> None:
    """Quantize an fp32 ONNX file with ONNX Runtime (static with calibration, or dynamic) into ``out_path``.

    ``nodes_to_exclude``: names of graph nodes left in float (ONNX Runtime's ``nodes_to_exclude``).
    """
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
    if preprocess:
        pre = src.with_name(src.stem + ".pre.onnx")
        quant_pre_process(str(src), str(pre))
        src = pre
    try:
        with atomic_path(out_path) as tmp:
            if mode == "dynamic":
                quantize_dynamic(str(src), str(tmp), per_channel=per_channel, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=nodes_to_exclude or [])
            else:
                if calib is None or len(calib) == 0:
                    raise ValueError(_("static quantization needs calibration samples"))
                arr = as_input(calib)
                batches = [arr[i:i + batch_size] for i in range(0, len(arr), batch_size)]
                method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[calibrate_method]
                quantize_static(str(src), str(tmp), _reader(batches, "input"),
                                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                                per_channel=per_channel, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=method,
                                nodes_to_exclude=nodes_to_exclude or [],
                                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    finally:
        if preprocess:
            src.unlink(missing_ok=True)
    strip_onnx(out_path)


def quantize_static_defaults(fp32_path: str | Path, out_path: str | Path, calib: np.ndarray,
                             batch_size: int = 32) -> None:
    """ONNX Runtime's ``quantize_static`` with all its defaults on the raw export (the benchmarks' peer)."""
    from onnxruntime.quantization import quantize_static

    arr = as_input(calib)
    quantize_static(str(fp32_path), str(out_path),
                    _reader([arr[i:i + batch_size] for i in range(0, len(arr), batch_size)], "input"))
