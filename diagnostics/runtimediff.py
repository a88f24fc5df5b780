"""Per-layer error of an int8 variant run by ONNX Runtime or OpenVINO, from the runtime's own intermediate outputs,
and the repair that puts layers back into float there ("until the drop is within X points").

- :func:`ort_layer_errors` — ONNX Runtime (QDQ graphs): the float twin is the base exported again the way the
  variant was (same exporter, ONNX Runtime's pre-processing, so tensor names match); both graphs get every
  intermediate tensor as an output (``qdq_loss_debug.modify_model_output_intermediate_tensors``), run on the
  same images (``collect_activations``), and are paired by tensor name (``create_activation_matching``). The
  *accumulated* error of a layer compares the int8 graph's output of the layer's node (before that output's own
  QuantizeLinear) with the float twin's. The *local* error is a simulation with the runtime's own numbers: the
  base's layer fed the base's input passed through the int8 graph's input QuantizeLinear/DequantizeLinear (its
  scale and zero point) with the weights the int8 graph dequantizes (``create_weight_matching``) — on the first
  layer it agrees with the runtime's output within :data:`SIMULATION_TOLERANCE` (tested).
- :func:`ov_layer_errors` — OpenVINO: the float model converted again and the int8 IR both get the outputs of
  every Convolution/MatMul (its bias Add where there is one) as extra outputs (``model.add_outputs``), matched
  by node name; accumulated error only (local: not measured, left NaN).
- :func:`added_error` — a layer's own share where the local error is missing: the accumulated error at the
  layer minus the largest before it.
- :func:`repair_int8` — re-quantize the base with the ranked layers left in float (ONNX Runtime's
  ``nodes_to_exclude``, NNCF's ``IgnoredScope(names=…)``), one more at a time, until the drop on the given
  samples is within the budget.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diagnostics.hooks import forward_hooks
from diagnostics.variantdiff import LayerError, _rel, _sqnr_db

SIMULATION_TOLERANCE = 0.02  # relative: |simulated − runtime| ≤ 2 % of the runtime's relative error (first layer)
_Q_IN = "_QuantizeLinear_Input"
_DQ_OUT = "_DequantizeLinear_Output"


def _batches(x: torch.Tensor, batch: int) -> list[np.ndarray]:
    arr = x.detach().cpu().numpy().astype(np.float32)
    return [arr[i:i + batch] for i in range(0, len(arr), batch)]


def _twin(name: str) -> str:
    """The float graph's name of a QDQ graph's tensor (the last node's output is renamed ``…_QuantizeLinear_Input``)."""
    return name[: -len(_Q_IN)] if name.endswith(_Q_IN) else name


def _float_twin_onnx(base: nn.Module, input_shape: tuple[int, ...], exporter: str, d: Path) -> Path:
    """The base exported and pre-processed as :func:`nnlab.runtimes.onnx.quantize_onnx` does before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from nnlab.runtimes.onnx import export_onnx

    raw, pre = d / "fp32.onnx", d / "fp32.pre.onnx"
    export_onnx(base, input_shape, raw, exporter)
    quant_pre_process(str(raw), str(pre))
    return pre


def _init(graph: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def _fake_quant(x: torch.Tensor, scale: np.ndarray, zp: np.ndarray) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear with a per-tensor scale and zero point (round half to even, as ONNX)."""
    lo, hi = (0, 255) if zp.dtype == np.uint8 else (-128, 127)
    s, z = float(np.asarray(scale).reshape(-1)[0]), float(np.asarray(zp).reshape(-1)[0])
    q = torch.clamp(torch.round(x.double() / s) + z, lo, hi)
    return ((q - z) * s).float()


def ort_layer_errors(base: nn.Module, int8_path: str | Path, input_shape: tuple[int, ...], x: torch.Tensor,
                     exporter: str = "dynamo", batch: int = 64) -> list[LayerError]:
    """Per-layer error of an ONNX Runtime QDQ int8 model against its base, from ONNX Runtime's intermediate outputs.

    Args:
        base: The float PyTorch model the int8 graph was made from.
        int8_path: The int8 ``.onnx`` (QDQ format).
        input_shape: ``C×H×W``.
        x: Normalised inputs ``N×C×H×W``.
        exporter: The exporter that made the int8 graph's float source (the record's ``extra["exporter"]``).

    Returns:
        One :class:`LayerError` per Conv/Gemm/MatMul layer of the int8 graph, in graph order (layer names as in the
        base's ``named_modules``).
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as qd

    from compression.int8 import onnx_layer_of
    from nnlab.runtimes.onnx import _reader

    qmodel = onnx.load(str(int8_path))
    g = qmodel.graph
    if not any(n.op_type == "DequantizeLinear" for n in g.node):
        raise ValueError("the per-layer error needs a QDQ graph (quant_format=qdq, static)")
    producer = {o: n for n in g.node for o in n.output}
    layers = [(onnx_layer_of(n), n) for n in g.node]
    layers = [(la, n) for la, n in layers if la]
    batches = _batches(x, batch)
    with tempfile.TemporaryDirectory(prefix="nnlab-ortdiff-") as tmp:
        d = Path(tmp)
        fpath = _float_twin_onnx(base, input_shape, exporter, d)
        fgraph = onnx.load(str(fpath)).graph
        fproducer = {o: n for n in fgraph.node for o in n.output}
        qd.modify_model_output_intermediate_tensors(str(int8_path), str(d / "q.aug.onnx"))
        qd.modify_model_output_intermediate_tensors(str(fpath), str(d / "f.aug.onnx"))
        q_act = qd.collect_activations(str(d / "q.aug.onnx"), _reader(batches, "input"))
        f_act = qd.collect_activations(str(d / "f.aug.onnx"), _reader(batches, "input"))
        match = qd.create_activation_matching(q_act, f_act)
        weights = qd.create_weight_matching(str(fpath), str(int8_path))

    # the base's inputs to each layer (for the local simulation)
    b = copy.deepcopy(base).eval()
    mods = dict(b.named_modules())
    b_in: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def fn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            b_in.setdefault(name, [])
            b_in[name].append(inputs[0].detach().clone())
        return fn

    with torch.no_grad(), forward_hooks(b, {la: keep(la) for la, _ in layers if la in mods}):
        for xb in batches:
            b(torch.from_numpy(xb))

    rows: list[LayerError] = []
    for depth, (layer, node) in enumerate(layers):
        out = node.output[0]
        twin = _twin(out)
        note = ""
        acc_rel = acc_db = local_rel = local_db = float("nan")
        pair = match.get(twin, {})
        test = pair.get("pre_qdq") if "float" in pair else q_act.get(out)
        ref = pair.get("float") if "float" in pair else f_act.get(twin)
        if test is not None and ref is not None:
            t, r = torch.from_numpy(np.concatenate(test).ravel()), torch.from_numpy(np.concatenate(ref).ravel())
            if _fused_relu(fproducer, twin):  # the quantizer dropped the ReLU: the uint8 clamp of the output does it
                t = torch.relu(t)
            if t.shape == r.shape:
                acc_rel, acc_db = _rel(r, t), _sqnr_db(r, t)
        else:
            note = f"tensor {twin} not found in both graphs"
        # local: the base's layer, with the int8 graph's weights and its input quantization
        mod = mods.get(layer)
        if mod is not None and layer in b_in:
            try:
                local_rel, local_db = _local(mod, node, g, producer, fgraph, fproducer, twin, weights,
                                             torch.cat(b_in[layer]))
            except (ValueError, RuntimeError) as exc:
                note = note or f"no local simulation ({str(exc)[:80]})"
        rows.append(LayerError(layer, type(mod).__name__ if mod is not None else node.op_type, depth, local_rel,
                               local_db, acc_rel, acc_db, note))
    return rows


def _fused_relu(fproducer: dict, twin: str) -> bool:
    """Whether the int8 node's output is a ReLU's in the float graph (ONNX Runtime's QDQ quantizer removes a ReLU
    after a Conv/Gemm and lets the output's uint8 QuantizeLinear clamp at its zero point instead)."""
    node = fproducer.get(twin)
    return node is not None and node.op_type == "Relu"


def _as_weight(arr: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(arr, np.float32))
    if t.shape != like.shape:
        t = t.reshape(like.shape) if t.numel() == like.numel() and t.dim() != 2 else t.T
    if t.shape != like.shape:
        raise ValueError(f"weight shape {tuple(t.shape)} against {tuple(like.shape)}")
    return t


def _local(mod: nn.Module, node: Any, g: Any, producer: dict, fgraph: Any, fproducer: dict, twin: str,
           weights: dict, x_in: torch.Tensor) -> tuple[float, float]:
    """Relative error and SQNR of ``mod`` with the int8 graph's dequantized weight and quantized input against
    ``mod`` with the float graph's weight, on the base's input ``x_in`` (with the activation the int8 node absorbed,
    if any).

    Both sides take the exported graph's weight and bias, not the module's: the exporter folds a following
    BatchNorm into the Conv, so the int8 weights are the folded ones and only the folded float ones compare."""
    w_name = node.input[1]
    if not w_name.endswith(_DQ_OUT):
        raise ValueError(f"weight {w_name} is not dequantized")
    w = weights.get(w_name[: -len(_DQ_OUT)])
    if w is None:
        raise ValueError(f"weight {w_name} not matched")
    fnode = fproducer.get(twin)
    if fnode is not None and fnode.op_type == "Relu":  # the Conv/Gemm feeding the ReLU the quantizer fused
        fnode = fproducer.get(fnode.input[0])
    ref_mod, sim = copy.deepcopy(mod), copy.deepcopy(mod)
    with torch.no_grad():
        ref_mod.weight.copy_(_as_weight(w["float"], ref_mod.weight))
        sim.weight.copy_(_as_weight(w["dequantized"], sim.weight))
        fb = _init(fgraph, fnode.input[2]) if fnode is not None and len(fnode.input) > 2 else None
        for m in (ref_mod, sim):  # the folded bias (also where the module had none before its BatchNorm)
            if fb is not None:
                m.bias = nn.Parameter(torch.from_numpy(np.asarray(fb, np.float32)).reshape(-1))
    xq = x_in
    a = node.input[0]
    if a.endswith(_DQ_OUT) and a in producer and producer[a].op_type == "DequantizeLinear":
        dq = producer[a]
        scale, zp = _init(g, dq.input[1]), _init(g, dq.input[2]) if len(dq.input) > 2 else np.zeros(1, np.uint8)
        if scale is None or zp is None:
            raise ValueError("input scale or zero point not constant")
        xq = _fake_quant(x_in, scale, zp)
    # the float graph node that produced the int8 node's output: a ReLU the quantizer fused into the Conv
    act = torch.relu if _fused_relu(fproducer, twin) else (lambda t: t)
    with torch.no_grad():
        ref, test = act(ref_mod(x_in)).float(), act(sim(xq)).float()
    return _rel(ref, test), _sqnr_db(ref, test)


def ov_layer_errors(base: nn.Module, int8_xml: str | Path, input_shape: tuple[int, ...], x: torch.Tensor,
                    batch: int = 64) -> list[LayerError]:
    """Per-layer accumulated error of an OpenVINO int8 IR against its base converted again, from extra outputs
    at every Convolution/MatMul (its bias Add where there is one), matched by node name."""
    import openvino as ov

    from compression.int8 import ov_layer_nodes
    from nnlab.runtimes import openvino as ovr

    fmodel = ovr.convert(base, input_shape)
    qmodel = ovr.load_ir(int8_xml)

    def points(model: Any) -> dict[str, Any]:
        """Layer → the output to read (the bias Add after the node when there is one)."""
        ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        out = {}
        for layer, name in ov_layer_nodes(model).items():
            add = name.rsplit("/", 1)[0] + "/Add"
            out[layer] = (ops[add] if add in ops else ops[name]).output(0)
        return out

    fp, qp = points(fmodel), points(qmodel)
    layers = [la for la in qp if la in fp]
    # an extra output on a node that already is a model output (the last layer's) returns that output
    fports = fmodel.add_outputs([fp[la] for la in layers])
    qports = qmodel.add_outputs([qp[la] for la in layers])
    core = ovr.core()

    def run(model: Any, ports: list) -> dict[str, np.ndarray]:
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": ov.Type.f32})
        index = {n: i for i, o in enumerate(compiled.outputs) for n in o.get_names()}
        where = [index[p.get_any_name()] for p in ports]
        got: dict[str, list[np.ndarray]] = {la: [] for la in layers}
        for xb in _batches(x, batch):
            res = compiled(xb)
            for la, i in zip(layers, where):
                got[la].append(np.asarray(res[i]))
        return {la: np.concatenate(v) for la, v in got.items()}

    fr, qr = run(fmodel, fports), run(qmodel, qports)
    mods = dict(base.named_modules())
    rows = []
    for depth, la in enumerate(layers):
        r, t = torch.from_numpy(fr[la]), torch.from_numpy(qr[la])
        ok = r.shape == t.shape
        rows.append(LayerError(la, type(mods[la]).__name__ if la in mods else "", depth, float("nan"), float("nan"),
                               _rel(r, t) if ok else float("nan"), _sqnr_db(r, t) if ok else float("nan"),
                               "OpenVINO: accumulated error only" if ok else "output shapes differ"))
    return rows


def added_error(rows: list[LayerError]) -> dict[str, float]:
    """Each layer's own share of the error: its local error where measured, else the rise of the accumulated
    error at the layer over the largest before it (graph order)."""
    out, worst = {}, 0.0
    for r in rows:
        acc = r.accumulated_rel if np.isfinite(r.accumulated_rel) else worst
        out[r.name] = r.local_rel if np.isfinite(r.local_rel) else max(0.0, acc - worst)
        worst = max(worst, acc)
    return out


def runtime_layer_errors(base: nn.Module, record: Any, artifact: Path, x: torch.Tensor) -> list[LayerError]:
    """Per-layer error of a stored int8 runtime variant (ONNX Runtime or OpenVINO), by its artifact format."""
    from compression.int8 import ONNX_FORMAT, OPENVINO_FORMAT

    shape = tuple(record.extra["input_shape"])
    if record.artifact_format == ONNX_FORMAT:
        return ort_layer_errors(base, artifact, shape, x, record.extra.get("exporter") or "dynamo")
    if record.artifact_format == OPENVINO_FORMAT:
        return ov_layer_errors(base, artifact, shape, x)
    raise ValueError(f"no per-layer error for artifact format {record.artifact_format!r}")


def _accuracy(runner: Any, x: torch.Tensor, y: np.ndarray, batch: int = 256) -> float:
    preds = np.concatenate([np.asarray(runner.predict_logits(x[i:i + batch])).argmax(1)
                            for i in range(0, len(x), batch)])
    return float((preds == np.asarray(y)).mean())


def repair_int8(base: nn.Module, data: Any, cfg: Any, ranking: list[str], x: torch.Tensor, y: np.ndarray,
                budget: float, base_accuracy: float, variant_accuracy: float, max_layers: int = 16,
                progress: Any = None, cancel: Any = None) -> tuple[list[str], float]:
    """Put the ranked layers back into float one more at a time (re-quantizing the base each time with them
    left out) until the drop on ``x``, ``y`` is within ``budget`` of ``base_accuracy``.

    Args:
        cfg: The variant's :class:`compression.int8.Int8Config` with its backend fixed (onnxruntime/openvino).

    Returns:
        ``(layers left in float, accuracy with them)``; ``([], variant_accuracy)`` when already within budget.
    """
    from compression.int8 import to_int8

    chosen: list[str] = []
    acc = variant_accuracy
    for name in ranking[:max_layers]:
        if base_accuracy - acc <= budget:
            break
        if cancel is not None and cancel():
            from nnlab.errors import Cancelled

            raise Cancelled("cancelled by the user")
        chosen.append(name)
        if progress is not None:
            from nnlab.i18n import _

            progress(_("{n} layer(s) in float: {layers}").format(n=len(chosen), layers=", ".join(chosen)))
        with tempfile.TemporaryDirectory(prefix="nnlab-repair-") as tmp:
            res = to_int8(base, data, dataclasses.replace(cfg, ignored_layers=",".join(chosen)), Path(tmp))
            acc = _accuracy(res.runner, x, y)
            del res
    return chosen, acc


def int8_config_of(record: Any) -> Any:
    """The :class:`compression.int8.Int8Config` a stored int8 runtime variant (or a repair of one) was made with,
    its backend fixed to the one that made the artifact and NNCF's own accuracy control off."""
    from compression.int8 import ONNX_FORMAT, OPENVINO_FORMAT, Int8Config, _config_of

    cfg = dict(record.config or {})
    if cfg.get("method") == "restore" and isinstance(cfg.get("int8"), dict):
        record = dataclasses.replace(record, config=cfg["int8"])
    backend = {ONNX_FORMAT: "onnxruntime", OPENVINO_FORMAT: "openvino"}.get(record.artifact_format)
    if backend is None:
        raise ValueError(f"{record.id} is not an ONNX Runtime or OpenVINO int8 variant")
    base_cfg: Int8Config = _config_of(record)
    return dataclasses.replace(base_cfg, backend=backend, accuracy_control=False)


def repair_runtime_variant(base: nn.Module, base_id: str, arch: str, record: Any, data: Any, ws: Any,
                           budget: float, samples: int = 512, max_layers: int = 16, rank_samples: int = 64,
                           progress: Any = None, cancel: Any = None) -> Any:
    """Repair an int8 ONNX Runtime/OpenVINO variant: rank its layers by their own error (the runtime's per-layer
    error, :func:`added_error`), re-quantize the base with the worst left in float, one more at a time, until the
    drop on the first ``samples`` test images is within ``budget``; the result is stored and measured like any
    variant (config method "restore", ``extra["restored_layers"]``).

    Returns:
        The new variant's record.
    """
    from compression.int8 import to_int8
    from compression.registry import ARTIFACT_LOADERS
    from compression.variant import store_result_variant

    def say(message: str, fraction: float) -> None:
        if progress is not None:
            progress(message, fraction)

    from nnlab.i18n import _

    cfg = int8_config_of(record)
    already = [la for la in (cfg.ignored_layers or "").split(",") if la.strip()]
    n = min(int(samples), len(data.labels("test")))
    x, y = data.tensors("test", np.arange(n))
    y = y.numpy()
    artifact = ws.root / record.artifact
    say(_("the runtime's per-layer error"), 0.05)
    rows = runtime_layer_errors(base, record, artifact, x[:rank_samples])
    score = added_error(rows)
    ranking = [r.name for r in sorted(rows, key=lambda r: -score[r.name]) if score[r.name] > 0 and r.name not in already]
    with torch.no_grad():
        acc_b = float((base.eval()(x).argmax(1).numpy() == y).mean())
    runner = ARTIFACT_LOADERS[record.artifact_format](artifact, base, record).runner
    acc_v = _accuracy(runner, x, y)
    say(_("putting layers back into float until the drop is within the budget"), 0.2)
    chosen, acc = repair_int8(base, data, cfg, ranking, x, y, budget, acc_b, acc_v, max_layers,
                              progress=lambda m: say(m, 0.4), cancel=cancel)
    final = dataclasses.replace(cfg, ignored_layers=",".join(already + chosen))
    config = {"method": "restore", "from_variant": record.id, "layers": chosen, "budget": budget, "samples": n,
              "int8": final.to_dict()}
    extra = {"restored_layers": chosen, "from_variant": record.id, "repair_samples": n, "repair_accuracy": acc,
             "repair_base_accuracy": acc_b, "repair_variant_accuracy": acc_v, "repair_ranking": ranking[:max_layers]}

    def build(workdir: Path) -> Any:
        res = to_int8(base, data, final, workdir)
        res.extra.update(extra)
        return res

    say(_("measuring the repaired variant ({n} layer(s) in float)").format(n=len(chosen)), 0.7)
    return store_result_variant(build, base, base_id, arch, config, data, ws,
                                name=f"{record.name} · {len(chosen)} layer(s) back (≤ {100 * budget:g} pt)")


def runtime_recovery(base: nn.Module, data: Any, record: Any, layers: list[str], x: torch.Tensor,
                     y: np.ndarray, variant_accuracy: float, progress: Any = None) -> tuple[float, list[Any]]:
    """Accuracy and agreement with the base when only one layer is left in float, per layer: the base
    re-quantized by the variant's runtime with that layer excluded (as NNCF's accuracy control and AIMET rank).

    Returns:
        ``(base accuracy, one :class:`diagnostics.variantdiff.Recovery` per layer, best first)``.
    """
    from compression.int8 import to_int8
    from diagnostics.variantdiff import Recovery

    cfg = int8_config_of(record)
    already = [la for la in (cfg.ignored_layers or "").split(",") if la.strip()]
    y = np.asarray(y)
    with torch.no_grad():
        pb = base.eval()(x).argmax(1).numpy()
    acc_b = float((pb == y).mean())
    drop = acc_b - variant_accuracy
    out = []
    for i, layer in enumerate(layers):
        if progress is not None:
            from nnlab.i18n import _

            progress(_("{layer} in float").format(layer=layer), i / max(1, len(layers)))
        with tempfile.TemporaryDirectory(prefix="nnlab-recovery-") as tmp:
            res = to_int8(base, data, dataclasses.replace(cfg, ignored_layers=",".join(already + [layer])),
                          Path(tmp))
            p = np.concatenate([np.asarray(res.runner.predict_logits(x[j:j + 256])).argmax(1)
                                for j in range(0, len(x), 256)])
            del res
        acc = float((p == y).mean())
        out.append(Recovery([layer], acc, float((p == pb).mean()),
                            (acc - variant_accuracy) / drop if drop > 0 else float("nan")))
    out.sort(key=lambda r: (-r.accuracy, -r.agreement))
    return acc_b, out
