"""Per-layer output distributions for a batch: dead units, saturation, mean, std, histograms.

Works for any ``nn.Module`` (base model or a compressed variant; quantized outputs are dequantized), so two
models can be compared on the same batch layer by layer. A module called several times in one forward
pass (ResNet's shared ``relu``) is summarised by its last call. Channels are found whatever the layout:
channels-last outputs (ConvNeXt's MLPs) and a vision transformer's tokens (``N×T×D``: channel = ``D``) are
counted by their real channel dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from diagnostics.features import channels_first, output_layout, private_copy
from diagnostics.hooks import capture_outputs
from nnlab.data.sets import ImageDataset
from nnlab.i18n import N_
from nnlab.models.archinfo import token_layout

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
               nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Mish, nn.PReLU, nn.Softplus)
# timm's own activation modules (ConvNeXt's and ViTs' GELU, EfficientNet's Swish …) are not torch's classes
_TIMM_ACTIVATION_MODULES = ("timm.layers.activations", "timm.layers.activations_me")
_BOUNDED_BY_NAME = {"Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
KINDS = ("activations", "conv/linear", "all leaves")
KIND_LABELS = {"activations": N_("activations"), "conv/linear": N_("conv/linear"), "all leaves": N_("all leaves")}
# The columns of :meth:`LayerActivation.row` for the reader (keys stay as they are; pages rename with _()).
COLUMNS = {"layer": N_("layer"), "type": N_("type"), "shape": N_("shape"), "mean": N_("mean"), "std": N_("std"),
           "min": N_("min"), "max": N_("max"), "dead units": N_("dead units"), "dead channels": N_("dead channels"),
           "saturated": N_("saturated"), "zeros": N_("zeros")}


@dataclass
class LayerActivation:
    """Output statistics of one layer over a batch.

    Attributes:
        dead_fraction: Units (one per output element position ``c,h,w``) never positive over the batch.
        dead_channels: Channels never positive at any position for any sample.
        saturated_fraction: Values within ``tol`` × range of a bounded activation's flat limits (sigmoid
            and tanh both ends, ReLU6 its top); NaN for unbounded layers.
        zero_fraction: Values exactly zero (ReLU's flat side).
    """

    name: str
    type: str
    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    dead_fraction: float
    dead_channels: float
    saturated_fraction: float
    zero_fraction: float
    counts: np.ndarray = field(repr=False)
    edges: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-able (NaN stays NaN); :meth:`from_dict` gives back the same numbers."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {**d, "shape": list(self.shape), "counts": self.counts.tolist(), "edges": self.edges.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> LayerActivation:
        return cls(**{**d, "shape": tuple(d["shape"]), "counts": np.asarray(d["counts"], dtype=np.int64),
                      "edges": np.asarray(d["edges"], dtype=np.float64)})

    def row(self) -> dict:
        return {"layer": self.name, "type": self.type, "shape": "×".join(map(str, self.shape)),
                "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
                "dead units": self.dead_fraction, "dead channels": self.dead_channels,
                "saturated": self.saturated_fraction, "zeros": self.zero_fraction}


def is_activation(module: nn.Module) -> bool:
    """An activation module: one of torch's (:data:`ACTIVATIONS`) or timm's."""
    return isinstance(module, ACTIVATIONS) or type(module).__module__ in _TIMM_ACTIVATION_MODULES


def bounds(module: nn.Module) -> tuple[float | None, float] | None:
    """Saturation limits of a bounded activation, else None.

    Returns ``(low, high)``; ``low`` is None for ReLU-like activations (ReLU6, hardtanh from 0), whose
    flat bottom at zero is reported as the zero fraction instead.
    """
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid)):
        return 0.0, 1.0
    if isinstance(module, nn.Tanh):
        return -1.0, 1.0
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        lo, hi = float(module.min_val), float(module.max_val)
        return (None if lo == 0 else lo), hi
    if type(module).__module__ in _TIMM_ACTIVATION_MODULES:
        return _BOUNDED_BY_NAME.get(type(module).__name__)
    return None


def select_layers(model: nn.Module, kind: str = "activations") -> list[str]:
    """Names of the layers to summarise: activation modules, conv/linear layers, or every leaf module."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out = []
    for n, m in model.named_modules():
        if not n:
            continue
        leaf = next(m.children(), None) is None
        if kind == "activations" and is_activation(m):
            out.append(n)
        elif kind == "conv/linear" and (isinstance(m, WEIGHTED) or m._get_name().startswith(("QuantizedConv",
                                                                                             "QuantizedLinear"))):
            out.append(n)
        elif kind == "all leaves" and leaf:
            out.append(n)
    return out


def summarize_output(name: str, module: nn.Module, t: torch.Tensor, bins: int = 50, tol: float = 1e-3,
                     layout: str = "chw") -> LayerActivation:
    """Statistics of one layer's output ``t`` (batch first).

    Args:
        layout: Where the channels are (:func:`diagnostics.features.output_layout`): dimension 1 ("chw"),
            the last dimension ("hwc", "tokens").
    """
    t = t.float()
    n = t.shape[0]
    units = t.reshape(n, -1)
    alive = (units > 0).any(0)
    if t.ndim >= 3:
        cf = channels_first(t, layout)
        ch_alive = (cf.transpose(0, 1).reshape(cf.shape[1], -1) > 0).any(1)
        dead_ch = float(1 - ch_alive.float().mean())
    else:
        dead_ch = float(1 - alive.float().mean())
    lim = bounds(module)
    if lim is None:
        sat = float("nan")
    else:
        lo, hi = lim
        span = (hi - (lo or 0.0)) * tol
        flat = t >= hi - span
        if lo is not None:
            flat |= t <= lo + span
        sat = float(flat.float().mean())
    vmin, vmax = float(t.min()), float(t.max())
    hi_edge = vmax if vmax > vmin else vmin + 1e-12
    counts = torch.histc(t.flatten(), bins=bins, min=vmin, max=hi_edge).numpy().astype(np.int64)
    return LayerActivation(name=name, type=type(module).__name__, shape=tuple(t.shape[1:]), mean=float(t.mean()),
                           std=float(t.std()) if t.numel() > 1 else 0.0, min=vmin, max=vmax,
                           dead_fraction=float(1 - alive.float().mean()), dead_channels=dead_ch,
                           saturated_fraction=sat, zero_fraction=float((t == 0).float().mean()),
                           counts=counts, edges=np.linspace(vmin, hi_edge, bins + 1))


def activation_stats(model: nn.Module, x: torch.Tensor, layers: list[str] | None = None, kind: str = "activations",
                     bins: int = 50, batch_size: int = 64,
                     progress: Callable[[float], None] | None = None) -> list[LayerActivation]:
    """Run the batch ``x`` through a private copy of ``model`` and summarise each layer's output.

    Args:
        x: Normalised inputs ``N×C×H×W`` (the statistics are over all of them).
        layers: Layer names; default :func:`select_layers` of ``kind``.
        batch_size: Forward in chunks of this size (outputs are concatenated before summarising).
        progress: Called with the fraction of chunks done.
    """
    m = private_copy(model)
    names = layers if layers is not None else select_layers(m, kind)
    if not names:
        return []
    try:
        dev = next(m.parameters()).device
    except StopIteration:
        dev = torch.device("cpu")
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with capture_outputs(m, names, transform=lambda t: t.cpu()) as store, torch.no_grad():
        chunks = list(torch.split(x, batch_size))
        for i, xb in enumerate(chunks):
            store.clear()
            m(xb.to(dev))
            for n in names:
                if n in store:
                    parts[n].append(store[n])
            if progress:
                progress((i + 1) / len(chunks))
    hw, tokens = tuple(x.shape[-2:]), token_layout(m)
    out = []
    for n in names:
        if parts[n]:
            t, mod = torch.cat(parts[n]), m.get_submodule(n)
            out.append(summarize_output(n, mod, t, bins, layout=output_layout(mod, t, hw, tokens)))
    return out


def compare(base: list[LayerActivation], other: list[LayerActivation]) -> list[dict]:
    """Rows matching layers by name: the base value, the variant value and the change, per statistic."""
    by_name = {a.name: a for a in other}
    rows = []
    for a in base:
        b = by_name.get(a.name)
        if b is None:
            continue
        row = {"layer": a.name}
        for key in ("mean", "std", "dead_fraction", "saturated_fraction"):
            va, vb = getattr(a, key), getattr(b, key)
            row[f"{key} (base)"] = va
            row[f"{key} (variant)"] = vb
            row[f"Δ {key}"] = vb - va
        rows.append(row)
    return rows


def activation_histogram(model: nn.Module, data: ImageDataset, layer: str,
                         samples: int = 256) -> tuple[np.ndarray, np.ndarray] | None:
    """Histogram ``(counts, edges)`` of one layer's outputs over the first ``samples`` test images.

    The hooks go on a private copy: the given model may be shared by every session.
    """
    import copy

    x = data.tensors("test", np.arange(min(samples, len(data.y_test))))[0]
    stats = activation_stats(copy.deepcopy(model), x, layers=[layer])
    return (stats[0].counts, stats[0].edges) if stats else None
