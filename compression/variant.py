"""A compressed variant, end to end: apply a pipeline, write the real artifact, measure it, store its record.

Every variant is measured by :mod:`nnlab.measure`, the way base models are: top-1 and per-class accuracy on
the test split, size of the artifact on disk and gzipped beside the dense fp32 size, latency at batch 1 and
32 with threads fixed in the runtime that executes it (the handler's runner when it has one, eager PyTorch
otherwise) timed in one interleaved run with the base as fp32 in that same runtime (the record's
``baseline``), MACs, parameters and nonzero parameters, and per-layer details.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as st_save
from torch import nn

from compression import packing
from compression.registry import (
    ARTIFACT_LOADERS,
    CancelFn,
    CompressContext,
    CompressResult,
    MethodConfig,
    ProgressFn,
    Runner,
    apply_pipeline,
)
from nnlab.data.sets import ImageDataset
from nnlab.evaluate import predict_logits, result_from_logits
from nnlab.i18n import _
from nnlab.jobs.pieces import register_variant_loader
from nnlab.measure import (
    BATCHES,
    against_base,
    artifact_sizes,
    count_macs,
    count_parameters,
    dense_fp32_bytes,
    latency_dicts,
    layer_table,
    rounds_for,
)
from nnlab.models.registry import create_model, load_into, state_dict_hash
from nnlab.records import Record
from nnlab.runtimes.torch_eager import TorchRunner
from nnlab.workspace import Workspace, new_id, save_state_dict


def write_default_artifact(model: nn.Module, workdir: Path, meta: dict) -> tuple[Path, str, list[dict]]:
    """Write the packed format when it is smaller than dense safetensors, else safetensors.

    Returns:
        ``(path, format, rows)``; rows give each tensor's encoding and bytes (packed only).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    data, rows = packing.pack_state(state, meta=meta)
    dense = len(st_save({k: v.contiguous() for k, v in state.items()}))
    if len(data) < dense and any(r["encoding"] != "dense" for r in rows):
        path = workdir / "model.nnlp"
        packing.save_packed(path, state, meta=meta)
        return path, packing.FORMAT, rows
    path = workdir / "model.safetensors"
    save_state_dict(path, state)
    return path, "safetensors", []


def runner_logits(runner: Runner, data: ImageDataset, split: str, indices: np.ndarray | None = None) -> np.ndarray:
    """Logits of a split (or ``indices`` of it) computed by a real runtime: the one pass,
    :func:`nnlab.evaluate.predict_logits`, run by ``runner``."""
    return predict_logits(None, data, split, indices=indices, runner=runner)


def layer_rows(model: nn.Module, input_shape: tuple[int, ...], handler_rows: list[dict]) -> list[dict]:
    """Per-layer table (name, type, output shape, params, nonzero, sparsity) merged with the handler's rows."""
    by_name = {r["name"]: r for r in handler_rows if "name" in r}
    rows = []
    try:
        table = layer_table(model, input_shape)
    except Exception:  # noqa: BLE001 - a wrapper that does not run in eager PyTorch
        table = []
    for r in table:
        name = r.pop("layer")
        if not r["params"]:
            continue
        row = {"name": name, **r, "sparsity": 1.0 - r["nonzero"] / r["params"]}
        mod = dict(model.named_modules()).get(name)
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor):
            row["shape"] = list(w.shape)
        row.update(by_name.pop(name, {}))
        rows.append(row)
    rows.extend(by_name.values())
    return rows


def make_variant(parent_model: nn.Module, parent_id: str, arch: str, configs: list[MethodConfig],
                 data: ImageDataset, ws: Workspace, name: str | None = None, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None, device: torch.device | str = "cpu",
                 latency_repeats: int | None = None, threads: int | None = None, variant_id: str | None = None) -> Record:
    """Apply ``configs`` in order to a copy of ``parent_model``, write the artifact, measure, store the record.

    Args:
        parent_model: The model to compress (never changed).
        parent_id: Its workspace id (stored as the record's parent).
        arch: Its architecture key.
        configs: One or more method configs (a pipeline).
        data: Dataset for calibration, fine-tuning and the test-split measurements.
        ws: Workspace receiving ``variants/<id>/``.
        name: Display name (default: the methods and the main settings).
        progress: ``progress(message, fraction)``.
        cancel: Returns True to stop; the run then raises ``Cancelled`` and leaves nothing behind.
        device: Where handlers train or calibrate.
        latency_repeats: About this many timed calls per runtime at batch 1 (default: the measurement's policy).
        threads: CPU threads for the latency measurement of variants run by eager PyTorch (default: torch's
            current setting); a variant run by another runtime is timed with its runner's fixed thread count.
        variant_id: Force the id (default: a fresh one).

    Returns:
        The stored :class:`Record`.

    Raises:
        nnlab.train.Cancelled: When cancelled; any handler error propagates. No record is written then.
    """
    vid = variant_id or new_id("v")
    workdir = ws.variant_dir(vid)
    if workdir.exists():
        raise FileExistsError(_("variant {vid} already exists").format(vid=vid))
    ctx = CompressContext(data=data, progress=None, cancel=cancel, workdir=workdir, device=device, arch=arch)
    if progress is not None:
        ctx.progress = lambda m, f: progress(m, 0.85 * f)
    try:
        t0 = time.perf_counter()
        result = apply_pipeline(parent_model, configs, ctx)
        seconds = time.perf_counter() - t0
        ctx.check_cancel()
        if progress is not None:
            progress(_("measuring the variant"), 0.86)
        record = _measure(result, parent_model, parent_id, arch, configs, data, ws, vid, name, latency_repeats,
                          threads, seconds)
        ctx.check_cancel()
        ws.save_variant(record)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if progress is not None:
        progress(_("done"), 1.0)
    return record


def _measure(result: CompressResult, parent: nn.Module, parent_id: str, arch: str, configs: list[MethodConfig],
             data: ImageDataset, ws: Workspace, vid: str, name: str | None, repeats: int,
             threads: int | None, seconds: float) -> Record:
    model = result.model.cpu().eval()
    out_arch = result.arch or arch
    c, h, w = data.input_shape
    meta = {"arch": out_arch, "input_shape": [c, h, w], "num_classes": data.num_classes}
    workdir = ws.variant_dir(vid)
    packed_rows: list[dict] = []
    if result.artifact is not None:
        artifact, fmt = Path(result.artifact), result.artifact_format or Path(result.artifact).suffix.lstrip(".")
    else:
        artifact, fmt, packed_rows = write_default_artifact(model, workdir, meta)
    size, gz = artifact_sizes(artifact)  # an OpenVINO IR counts its .xml and its .bin
    threads = threads or torch.get_num_threads()
    runner = result.runner or TorchRunner(model, threads, "pytorch-eager-fp32-cpu")
    ev = result_from_logits(runner_logits(runner, data, "test"), data.labels("test").numpy())
    tr_idx = np.arange(min(len(data.y_train), 10000))
    tr = result_from_logits(runner_logits(runner, data, "train", tr_idx), data.labels("train").numpy()[tr_idx])
    lat, baseline = against_base(runner, parent, data.input_shape, BATCHES, rounds_for(repeats))
    latency = latency_dicts(lat)
    params, nonzero = count_parameters(model)
    try:
        macs = count_macs(model, data.input_shape)
    except Exception:  # noqa: BLE001 - a wrapper running outside eager PyTorch
        macs = 0
    if macs == 0:  # e.g. an int8 runtime wrapper: the same multiply-accumulates as the float graph
        macs = count_macs(parent, data.input_shape)
    dense = dense_fp32_bytes(model) if params else dense_fp32_bytes(parent)
    rows = layer_rows(model, data.input_shape, result.layers)
    enc = {r["name"]: r for r in packed_rows}
    for r in rows:  # how the layer's weight is stored in the packed file
        e = enc.get(f"{r['name']}.weight")
        if e:
            r["encoding"], r["stored_bytes"] = e["encoding"], e["bytes"]
    if isinstance(configs, dict):  # a model made outside the registry (e.g. layers put back): its own description
        methods, cfg_dict, default_name = [configs["method"]], configs, configs["method"]
    else:
        methods = [cfg.method for cfg in configs]
        cfg_dict = configs[0].to_dict() if len(configs) == 1 else {"steps": [cfg.to_dict() for cfg in configs]}
        default_name = describe_configs(configs)
    extra = {**result.extra, **meta, "seconds": round(seconds, 2), "runtime": latency["1"]["runtime"],
             "latency_threads": latency["1"]["threads"],
             "size_packed_bytes": size if fmt == packing.FORMAT else None}
    if params:
        extra["weights_hash"] = state_dict_hash(model.state_dict())
    return Record(id=vid, name=(name or default_name)[:120], method="+".join(methods), config=cfg_dict,
                  parent=parent_id, arch=out_arch, dataset=data.id, accuracy=ev.accuracy,
                  per_class_accuracy=ev.per_class_accuracy(data.num_classes), train_accuracy=tr.accuracy,
                  size_bytes=size, size_gzip_bytes=gz, size_dense_bytes=dense, latency=latency,
                  baseline={**baseline, "parent": parent_id}, macs=macs,
                  params=params, nonzero_params=nonzero, layers=rows,
                  artifact=str(artifact.relative_to(ws.root)), artifact_format=fmt, created=time.time(),
                  status="ok", extra=extra)


def store_model_variant(model: nn.Module, parent_model: nn.Module, parent_id: str, arch: str, config: dict,
                        data: ImageDataset, ws: Workspace, name: str, extra: dict | None = None) -> Record:
    """Measure and store a model made outside the method registry (``config["method"]`` names how, e.g.
    "restore" for layers put back into a variant) exactly like any variant: artifact, accuracy, size, latency
    beside the base in its runtime, MACs. The model is not changed."""
    return store_result_variant(lambda _: CompressResult(model=copy.deepcopy(model).cpu().eval(),
                                                         extra=dict(extra or {})),
                                parent_model, parent_id, arch, config, data, ws, name)


def store_result_variant(build: Callable[[Path], CompressResult], parent_model: nn.Module, parent_id: str,
                         arch: str, config: dict, data: ImageDataset, ws: Workspace, name: str) -> Record:
    """Like :func:`store_model_variant` for a result that writes its own artifact: ``build(workdir)`` returns
    it (e.g. an int8 runtime model re-quantized with layers left in float), then it is measured and stored."""
    vid = new_id("v")
    workdir = ws.variant_dir(vid)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        result = build(workdir)
        record = _measure(result, parent_model, parent_id, arch, config, data, ws, vid, name, None, None,
                          time.perf_counter() - t0)
        ws.save_variant(record)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return record


def remeasure_variant(ws: Workspace, record: Record, parent: nn.Module) -> Record:
    """A variant's latency measured again by today's harness, beside its base in the same runtime (a new record,
    the rest kept), e.g. for a record made by an older harness."""
    result = load_variant_result(ws, record)
    shape = tuple(record.extra["input_shape"])
    threads = int((record.latency.get("1") or {}).get("threads") or torch.get_num_threads())
    runner = result.runner or TorchRunner(result.model.eval(), threads, "pytorch-eager-fp32-cpu")
    lat, baseline = against_base(runner, parent, shape, BATCHES)
    latency = latency_dicts(lat)
    return dataclasses.replace(record, latency=latency, baseline={**baseline, "parent": record.parent},
                               extra={**record.extra, "runtime": latency["1"]["runtime"], "remeasured": time.time()})


def describe_configs(configs: list[MethodConfig], settings: int = 2) -> str:
    """A short name for a pipeline: each method with its first ``settings`` settings, joined by arrows."""
    parts = []
    for cfg in configs:
        d = cfg.to_dict()
        d.pop("method")
        shown = ", ".join(f"{k}={v}" for k, v in list(d.items())[:settings])
        parts.append(f"{cfg.method}({shown})")
    return " → ".join(parts)


def load_variant_result(ws: Workspace, record: Record) -> CompressResult:
    """Load a stored variant back: a PyTorch model (and a runner for formats that have one)."""
    path = ws.root / record.artifact
    shape = record.extra.get("input_shape")
    num_classes = record.extra.get("num_classes")
    if not path.is_file():
        raise FileNotFoundError(_("the artifact of {id} is missing ({artifact})").format(
            id=record.id, artifact=record.artifact))
    if not shape or not num_classes:
        raise ValueError(_("record {id} lacks input_shape / num_classes").format(id=record.id))
    template = create_model(record.arch, shape[0], num_classes, (shape[1], shape[2]))
    fmt = record.artifact_format
    if fmt == packing.FORMAT:
        state, _meta = packing.load_packed(path)
    elif fmt == "safetensors":
        from nnlab.workspace import load_state_dict

        state = load_state_dict(path)
    elif fmt in ARTIFACT_LOADERS:
        return ARTIFACT_LOADERS[fmt](path, template, record)
    else:
        raise ValueError(_("no loader for artifact format {fmt!r}").format(fmt=fmt))
    model = load_into(packing.fit_modules_to_state(template, state), state)
    return CompressResult(model=model, artifact=path, artifact_format=fmt)


@register_variant_loader
def load_variant_model(ws: Workspace, record: Record) -> nn.Module:
    """The variant's PyTorch model in eval mode (for comparisons, histograms); also how job pieces load a
    variant they are given by reference."""
    return load_variant_result(ws, record).model.eval()
