"""Base models: the self-trained demo CNN (cached in the workspace) and user models, each with a record."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from torch import nn

from nnlab import config
from nnlab.data.sets import ImageDataset
from nnlab.evaluate import EvalResult, predict_logits, result_from_logits
from nnlab.measure import (
    BATCHES,
    RuntimeTable,
    artifact_sizes,
    count_macs,
    count_parameters,
    fp32_latencies,
    layer_table,
    rounds_for,
    state_sizes,
)
from nnlab.models.registry import create_model, load_into, state_dict_hash
from nnlab.records import Record
from nnlab.train import EpochStats, Progress, TrainConfig, train_model
from nnlab.workspace import Workspace, WorkspaceError

# the train accuracy of a record is measured on the first this-many training samples
TRAIN_SAMPLE = 10000


def demo_id(data: ImageDataset, arch: str = "demo-cnn") -> str:
    """The workspace id of the demo model for a dataset."""
    return f"{arch}-{data.id}"


def demo_config(data: ImageDataset) -> TrainConfig:
    """Training settings of the demo model: a few epochs on big sets, more on tiny ones."""
    epochs = config.demo_epochs()
    if len(data.y_train) < 5000:
        epochs = max(epochs, 30 if epochs >= 4 else epochs * 6)
    return TrainConfig(epochs=epochs, lr=4e-3, batch_size=256 if len(data.y_train) >= 5000 else 64)


@contextlib.contextmanager
def _training_lock(ws: Workspace, model_id: str) -> Iterator[None]:
    """One process trains a given demo model at a time; the others wait, then load its result."""
    path = ws.root / "locks" / f"{model_id}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "w")
    except OSError:  # read-only workspace: nothing to coordinate, nothing will be written
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_demo(data: ImageDataset, ws: Workspace, progress: Callable[[Progress], None] | None = None,
                arch: str = "demo-cnn", cancel: Callable[[], bool] | None = None,
                measuring: Callable[[str], None] | None = None) -> tuple[nn.Module, Record, list[dict]]:
    """Load the demo model for ``data`` from the workspace, training and storing it first if needed.

    Args:
        data: The dataset.
        ws: The workspace holding ``models/<demo id>/``.
        progress: Training progress (epoch, batch, loss, accuracy).
        arch: "demo-cnn" or another registered architecture trained the same way.
        cancel: Polled between batches; True stops training (nothing is stored).
        measuring: Told when training is over and the model is being measured.
    """
    model_id = demo_id(data, arch)
    c, h, w = data.input_shape
    if not ws.has_model(model_id):
        with _training_lock(ws, model_id):
            if not ws.has_model(model_id):
                model = create_model(arch, c, data.num_classes, (h, w))
                t0 = time.perf_counter()
                print(f"nnlab: training {model_id} ({demo_config(data).epochs} epochs, {len(data.y_train):,} "
                      "images)", file=sys.stderr, flush=True)
                history = train_model(model, data, demo_config(data), progress=progress, cancel=cancel)
                seconds = time.perf_counter() - t0
                if measuring is not None:
                    measuring("measuring the trained model (accuracy, latency, MACs)")
                model = model.cpu().eval()
                hist = [e.to_dict() for e in history]
                extra = {"train_seconds": round(seconds, 1), "trained_by": "nnlab"}
                try:
                    path = ws.save_model(model_id, model.state_dict(), hist)
                except WorkspaceError as exc:  # read-only or full disk: keep working from memory
                    extra["not_saved"] = str(exc)
                    record = profile_model(model, data, model_id, f"Demo CNN on {data.name}", arch, None, extra=extra)
                    return model, record, hist
                record = profile_model(model, data, model_id, f"Demo CNN on {data.name}", arch, path, extra=extra)
                ws.save_model_record(model_id, record)
    model = create_model(arch, c, data.num_classes, (h, w))
    load_into(model, ws.load_model_state(model_id))
    record = ws.load_model_record(model_id)
    assert record is not None
    return model, record, ws.load_history(model_id)


def profile_model(model: nn.Module, data: ImageDataset, model_id: str, name: str, arch: str,
                  artifact: Path | None, method: str = "base", parent: str = "", cfg: dict | None = None,
                  extra: dict | None = None, latency_repeats: int | None = None,
                  test_eval: EvalResult | None = None, table: RuntimeTable | None = None,
                  sizes: bool = True) -> Record:
    """Measure a float model the one way (:mod:`nnlab.measure`): fp32 latency in every runtime available here
    (one interleaved run per batch size), test and train accuracy in the fastest verified runtime, parameters,
    MACs, size on disk and gzipped (``artifact``, or the weights as safetensors when there is none yet).

    The record's ``latency`` is the fastest runtime's at each batch size; ``latencies`` holds every runtime.

    ``test_eval``: the model's stored pass over the whole test split (:func:`nnlab.jobs.kinds.ensure_evaluation`,
    the one the Overview streamed): the record's accuracy is taken from it instead of a second pass. ``table``: the
    timing of every runtime, when the caller measured it already (:func:`profile_table`). ``sizes=False``: the caller
    stores the weights right after and measures the sizes from that file (:func:`store_model`): gzip -9 of a large
    model's weights takes seconds (VGG-16: about 19 s on 2 cores), so it is done once.
    """
    model = model.eval()
    cpu_model = model.cpu()
    if table is None:
        table = profile_table(cpu_model, data, latency_repeats)
    latency = table.fastest_latency()
    eval_rt = table.fastest(BATCHES[-1])
    runner = table.runners.get(eval_rt)
    labels = data.labels("test").numpy()
    if test_eval is not None and len(test_eval.labels) == len(labels) and (test_eval.labels == labels).all():
        ev = test_eval  # the whole test split, already run: never twice
    else:
        ev = result_from_logits(predict_logits(cpu_model, data, "test", runner=runner), labels)
    tr_idx = np.arange(min(len(data.y_train), TRAIN_SAMPLE))
    tr = result_from_logits(predict_logits(cpu_model, data, "train", indices=tr_idx, runner=runner),
                            data.labels("train").numpy()[tr_idx])
    params, nonzero = count_parameters(cpu_model)
    if not sizes:
        size = gz = 0
    elif artifact is not None and Path(artifact).is_file():
        size, gz = artifact_sizes(artifact)
    else:
        size, gz = state_sizes(cpu_model)
    rows = layer_table(cpu_model, data.input_shape)
    c, h, w = data.input_shape
    shape_extra = {"input_shape": [c, h, w], "num_classes": data.num_classes,
                   "preprocessing": data.preprocessing.to_dict(), "runtime_figures": table.figures,
                   "eval_runtime": eval_rt, "train_accuracy_samples": len(tr_idx)}
    return Record(id=model_id, name=name, method=method, config=cfg or {}, parent=parent, arch=arch, dataset=data.id,
                  accuracy=ev.accuracy, per_class_accuracy=ev.per_class_accuracy(data.num_classes),
                  train_accuracy=tr.accuracy, size_bytes=size, size_gzip_bytes=gz, size_dense_bytes=size,
                  latency=latency, latencies=table.latencies, macs=count_macs(cpu_model, data.input_shape),
                  params=params, nonzero_params=nonzero, layers=rows, artifact_format="safetensors",
                  created=time.time(), extra={**shape_extra, **(extra or {}),
                                                 "weights_hash": state_dict_hash(model.state_dict())})


def profile_table(model: nn.Module, data: ImageDataset, latency_repeats: int | None = None) -> RuntimeTable:
    """fp32 latency of a float model in every runtime available here, checked on real test images: the timing
    :func:`profile_model` records (and whose fastest runtime every bulk pass of the model then uses)."""
    probe = next(iter(data.stream("test", 8)))[0].numpy()  # real, preprocessed images: the fidelity check
    return fp32_latencies(model.cpu().eval(), data.input_shape, batches=BATCHES, rounds=rounds_for(latency_repeats),
                          probe=probe)


def remeasure_latency(model: nn.Module, record: Record, input_shape: tuple[int, ...]) -> Record:
    """The base's fp32 latency in every runtime measured again by today's harness (a new record; the rest of
    the record is kept)."""
    table = fp32_latencies(model.cpu().eval(), input_shape, batches=BATCHES)
    latency = table.fastest_latency()
    return dataclasses.replace(record, latency=latency, latencies=table.latencies,
                               extra={**record.extra, "runtime_figures": table.figures, "remeasured": time.time()})


def history_as_stats(history: list[dict]) -> list[EpochStats]:
    return [EpochStats(**h) for h in history]
