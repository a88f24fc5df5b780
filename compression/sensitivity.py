"""Per-layer sensitivity: compress one layer at a time over a grid of levels and record the accuracy.

A layer that loses little accuracy at high sparsity (or few bits) can be compressed harder; the table
lets a user pick per-layer levels, and :func:`suggest_levels` picks, for each layer, the strongest level
whose accuracy drop stays within a budget (the drops of different layers are assumed roughly additive,
so the budget is split evenly across layers); :func:`suggested_config` turns that into the per-layer
config of unstructured pruning or weight quantization.

Accuracy is measured on a held-out part of the training split by default, so choosing levels does not
tune on the test split. The cells of the grid are independent pieces of :func:`nnlab.jobs.pieces.map_tasks`
(Ray tasks, or in-process one after another).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from compression.pruning import channel_groups, channel_prune, prunable_layers, split_train
from compression.registry import CancelFn, ProgressFn
from nnlab.data.sets import ImageDataset
from nnlab.i18n import _
from nnlab.jobs.pieces import (
    Report,
    dataset_ref,
    executor,
    load_dataset_ref,
    load_model_ref,
    map_tasks,
    raise_for_outcome,
    primed,
    ref_key,
)
from nnlab.train import quick_eval

# kind → (transform(weight, level) → new weight, "higher level = stronger compression")
LayerTransform = Callable[[torch.Tensor, float], torch.Tensor]
TRANSFORMS: dict[str, tuple[LayerTransform, bool]] = {}
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {}


def register_transform(kind: str, fn: LayerTransform, stronger_when_higher: bool,
                       default_levels: tuple[float, ...]) -> None:
    """Add a one-layer transform (e.g. the quantization helper's fake quantization at ``bits``)."""
    TRANSFORMS[kind] = (fn, stronger_when_higher)
    DEFAULT_LEVELS[kind] = default_levels


def _prune_weight(w: torch.Tensor, level: float) -> torch.Tensor:
    holder = nn.Module()
    holder.weight = nn.Parameter(w.detach().clone())
    prune.l1_unstructured(holder, "weight", amount=float(level))
    return holder.weight.detach()


register_transform("prune", _prune_weight, True, (0.3, 0.5, 0.7, 0.8, 0.9, 0.95))

def _per_group(w: torch.Tensor, level: float) -> torch.Tensor:
    raise TypeError("channel pruning acts on dependency groups, not on one weight (see group_cell_piece)")


# channel pruning per Torch-Pruning dependency group: rows keyed by the group's leading layer (see channel_groups)
register_transform("channels", _per_group, True, (0.25, 0.5, 0.75))
GROUP_KINDS = ("channels",)

try:  # the quantization module's FakeQuant (Algorithms 2–3, per output channel)
    from compression.quantization import fake_quantize as _fq

    def _quantize_weight(w: torch.Tensor, level: float) -> torch.Tensor:
        with torch.no_grad():
            return _fq(w.detach(), bits=int(level), symmetric=False, axis=0)

    register_transform("quantize", _quantize_weight, False, (8, 6, 4, 3, 2))
except ImportError:  # pragma: no cover - quantization module absent
    pass


@dataclass
class SensitivityTable:
    """Accuracy after compressing one layer at one level (everything else untouched).

    Attributes:
        kind: "prune" or "quantize".
        base_accuracy: Accuracy of the untouched model on the same samples.
        rows: One dict per (layer, level): layer, level, accuracy, drop, params.
        split: Where accuracy was measured ("validation" = held-out train samples, or "test").
    """

    kind: str
    base_accuracy: float
    rows: list[dict] = field(default_factory=list)
    split: str = "validation"

    def layers(self) -> list[str]:
        return list(dict.fromkeys(r["layer"] for r in self.rows))

    def levels(self) -> list[float]:
        return list(dict.fromkeys(r["level"] for r in self.rows))

    def matrix(self) -> np.ndarray:
        """``layers × levels`` accuracy matrix (for a heat map)."""
        acc = {(r["layer"], r["level"]): r["accuracy"] for r in self.rows}
        return np.array([[acc.get((la, lv), np.nan) for lv in self.levels()] for la in self.layers()])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "base_accuracy": self.base_accuracy, "rows": self.rows, "split": self.split}


def layer_sensitivity(model: nn.Module, data: ImageDataset, kind: str = "prune",
                      levels: tuple[float, ...] | None = None, layers: list[str] | None = None,
                      split: str = "validation", max_samples: int = 2000, seed: int = 0,
                      progress: ProgressFn | None = None, cancel: CancelFn | None = None, *,
                      model_ref: dict | None = None, data_ref: dict | None = None, use_ray: bool | None = None,
                      threads: int | None = None) -> SensitivityTable:
    """Compress each Conv/Linear layer alone at each level and measure the accuracy.

    Every (layer, level) cell is a piece of :func:`nnlab.jobs.pieces.map_tasks`: a Ray task when Ray is on and the
    workers can load the model and the data by reference (``model_ref`` given, the data registered), in-process
    otherwise (the caller's model and data, one cell after another). Both give the same table.

    Args:
        model: Not changed (each cell works on a copy).
        data: The dataset.
        kind: A registered transform ("prune": sparsity levels; "quantize": bit widths).
        levels: Levels to try (default per kind).
        layers: Layer names to analyse (default: all Conv/Linear layers).
        split: "validation" (held-out train samples) or "test".
        max_samples: At most this many samples are evaluated per point.
        seed: Seed of the validation split.
        progress: ``progress(message, fraction)``.
        cancel: Returns True to stop (raises ``Cancelled``).
        model_ref: How Ray workers load ``model`` (:func:`nnlab.jobs.pieces.model_ref`); without it the cells run
            in-process.
        data_ref: How Ray workers load ``data`` (default: :func:`nnlab.jobs.pieces.dataset_ref` of it).
        use_ray: True: Ray; False: in-process; None: Ray unless ``NNLAB_RAY=0``.
        threads: Intra-op threads of each cell (default: this process's current count in-process, 1 on Ray).

    Raises:
        Cancelled: ``cancel()`` returned True.
        RuntimeError: A cell failed (every failed cell named, with its error).
    """
    if kind not in TRANSFORMS:
        raise ValueError(_("unknown sensitivity kind {kind!r}; available: {available}").format(
            kind=kind, available=', '.join(TRANSFORMS)))
    if split not in ("validation", "test"):
        raise ValueError(_("split must be 'validation' or 'test', got {split!r}").format(split=split))
    levels = tuple(levels or DEFAULT_LEVELS[kind])
    work = copy.deepcopy(model).cpu().eval()
    idx, ev_split = _eval_samples(data, split, max_samples, seed)
    _loss, base = quick_eval(work, data, ev_split, indices=idx, device=torch.device("cpu"))
    if kind in GROUP_KINDS:  # one row per dependency group, keyed by its leading layer
        groups = channel_groups(work, data.input_shape, data.num_classes)
        chosen = [(g["layer"], g["params"]) for g in groups if layers is None or g["layer"] in layers]
        members = {g["layer"]: g["members"] for g in groups}
        what = _("no dependency group led by a layer named {names}")
    else:
        chosen = [(n, m.weight.numel()) for n, m in prunable_layers(work) if layers is None or n in layers]
        members = {}
        what = _("no Conv/Linear layer named {names}")
    if layers is not None and len(chosen) != len(set(layers)):
        missing = set(layers) - {n for n, _p in chosen}
        raise ValueError(what.format(names=", ".join(sorted(missing))))
    del work
    table = SensitivityTable(kind, base, split=split)
    cells = [(name, params, level) for name, params in chosen for level in levels]
    if not cells:
        return table

    why = "" if model_ref is not None else "no model reference: workers cannot load the model"
    try:
        dref = data_ref or dataset_ref(data)
    except ValueError as exc:
        dref, why = {"key": data.id, "path": "", "preprocessing": None, "id": data.id}, f"data not shareable: {exc}"
    mref = model_ref or {"live": os.urandom(8).hex()}
    on_ray = not why and executor(use_ray).kind == "ray"
    common = {"model": mref, "data": dref, "kind": kind, "split": split, "max_samples": int(max_samples),
              "seed": int(seed)}
    pieces = [{**common, "layer": name, "level": level} for name, _, level in cells]
    names = [f"{name} at {level:g}" for name, _, level in cells]
    n_threads = threads or (1 if on_ray else torch.get_num_threads())
    piece_fn = group_cell_piece if kind in GROUP_KINDS else cell_piece
    with primed({} if on_ray else {ref_key(mref): model, ref_key(dref): data}):
        results = map_tasks(piece_fn, pieces, _overall(progress, names), cancel, use_ray=on_ray,
                            threads_per_task=n_threads)
    raise_for_outcome(results, names, "sensitivity")
    for (name, params, level), r in zip(cells, results):
        acc = r.value["accuracy"]
        row = {"layer": name, "level": level, "accuracy": acc, "drop": base - acc, "params": params}
        if kind in GROUP_KINDS:
            row.update(members=members[name], channels_before=r.value["channels_before"],
                       channels_after=r.value["channels_after"], changed=r.value["changed"])
        table.rows.append(row)
    return table


def cell_piece(piece: dict, report: Report) -> dict:
    """Piece function: the accuracy with layer ``piece["layer"]`` alone compressed at ``piece["level"]``.

    The piece holds the model and data references, the transform ``kind``, and the split, sample count and seed
    that pick the evaluated samples. The model it resolves is shared: the cell works on a copy.
    """
    data = load_dataset_ref(piece["data"])
    work = _copy_but_layer(load_model_ref(piece["model"], data), piece["layer"])
    mod = dict(work.named_modules())[piece["layer"]]
    fn, _kind = TRANSFORMS[piece["kind"]]
    with torch.no_grad():
        mod.weight.copy_(fn(mod.weight.detach().clone(), piece["level"]))
    idx, ev_split = _eval_samples(data, piece["split"], int(piece["max_samples"]), int(piece["seed"]))
    _loss, acc = quick_eval(work, data, ev_split, indices=idx, device=torch.device("cpu"))
    report(_("accuracy {acc:.3f}").format(acc=acc), 1.0)
    return {"accuracy": acc}


def group_cell_piece(piece: dict, report: Report) -> dict:
    """Piece function: the accuracy with the dependency group led by ``piece["layer"]`` alone pruned by the channel
    ratio ``piece["level"]`` (Torch-Pruning, L2 magnitude, every coupled layer with it), as the channel-pruning
    method's ``per_layer`` does; also the channel counts before and after and the layers whose shape changed."""
    data = load_dataset_ref(piece["data"])
    work = copy.deepcopy(load_model_ref(piece["model"], data)).cpu().eval()
    before = {n: tuple(m.weight.shape) for n, m in prunable_layers(work)}
    channel_prune(work, data.input_shape, data.num_classes, "channels", 0.0,
                  per_group={piece["layer"]: float(piece["level"])})
    after = {n: tuple(m.weight.shape) for n, m in prunable_layers(work)}
    idx, ev_split = _eval_samples(data, piece["split"], int(piece["max_samples"]), int(piece["seed"]))
    _, acc = quick_eval(work, data, ev_split, indices=idx, device=torch.device("cpu"))
    report(f"accuracy {acc:.3f}", 1.0)
    return {"accuracy": acc, "channels_before": int(before[piece["layer"]][0]),
            "channels_after": int(after[piece["layer"]][0]), "changed": [n for n in before if before[n] != after[n]]}


def _copy_but_layer(model: nn.Module, layer: str) -> nn.Module:
    """A CPU copy of ``model`` in eval mode whose layer ``layer`` has its own weight; on CPU, every other tensor is
    shared with ``model`` (read only: a cell changes that one weight), so a cell does not copy the whole model."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors):  # .cpu() would move shared tensors: copy everything
        return copy.deepcopy(model).cpu().eval()
    own = dict(model.named_modules())[layer].weight
    return copy.deepcopy(model, {id(t): t for t in tensors if t is not own}).eval()


def _eval_samples(data: ImageDataset, split: str, max_samples: int, seed: int) -> tuple[np.ndarray, str]:
    """The evaluated samples: held-out training indices ("validation") or the first test ones, and their split."""
    if split == "validation":
        return split_train(len(data.y_train), seed)[1][:max_samples], "train"
    return np.arange(min(max_samples, len(data.y_test))), "test"


def _overall(progress: ProgressFn | None, names: list[str]) -> Callable[[int, str, float], None] | None:
    """Per-cell progress → one monotone progress of the table."""
    if progress is None:
        return None
    done = [0.0] * len(names)
    shown = [0.0]

    def on_cell(i: int, message: str, fraction: float) -> None:
        done[i] = max(done[i], fraction)
        shown[0] = max(shown[0], sum(done) / len(done))
        progress(f"{names[i]}: {message}", shown[0])

    return on_cell


def suggest_levels(table: SensitivityTable, max_drop: float) -> dict[str, float | None]:
    """For each layer the strongest level whose drop is ≤ ``max_drop`` / number of layers (None: none is)."""
    _, higher = TRANSFORMS[table.kind]
    layers = table.layers()
    per_layer = max_drop / max(1, len(layers))
    out: dict[str, float | None] = {}
    for la in layers:
        ok = [r["level"] for r in table.rows if r["layer"] == la and r["drop"] <= per_layer + 1e-12]
        out[la] = (max(ok) if higher else min(ok)) if ok else None
    return out


# kind → (method, the per-layer level that leaves a layer untouched, what that means in words)
LAB_METHODS: dict[str, tuple[str, float, str]] = {
    "prune": ("prune-unstructured", 0.0, "sparsity 0"),
    "quantize": ("quantize-weights", 32, "float32"),
    "channels": ("prune-channels", 0.0, "no channels removed"),
}


def suggested_config(table: SensitivityTable, suggestion: dict[str, float | None]) -> dict | None:
    """The method config (as a dict) applying ``suggestion`` layer by layer; None when no method takes it.

    Every analysed layer is listed in the config's ``per_layer`` field: a layer with a suggested level gets it,
    a layer without one (no level within the budget) is left untouched — sparsity 0 for pruning, float32 for
    quantization — instead of being forced to some other layer's level.
    """
    if table.kind not in LAB_METHODS:
        return None
    method, untouched, _ = LAB_METHODS[table.kind]

    def fmt(level: float) -> str:
        return f"{int(level)}" if table.kind == "quantize" else f"{float(level):g}"

    per_layer = ",".join(f"{la}={fmt(untouched if lv is None else lv)}" for la, lv in suggestion.items())
    if table.kind == "prune":
        return {"method": method, "sparsity": 0.0, "scope": "layer", "targets": "conv+linear",
                "per_layer": per_layer}
    if table.kind == "channels":  # per dependency group, keyed by its leading layer
        return {"method": method, "target": "channels", "scope": "layer", "norm": "l2", "round_to": 1,
                "per_layer": per_layer}
    # the analysis quantized asymmetrically per output channel (see _quantize_weight)
    return {"method": method, "bits": 8, "scheme": "asymmetric", "granularity": "per-channel",
            "keep_first_last": False, "per_layer": per_layer}
