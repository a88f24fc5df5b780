"""Convolution filters and weights: layer listing, filter grids, L1/L2 norms, histograms, a weight table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from nnlab.data.viz import grid
from nnlab import i18n
from nnlab.i18n import N_, _

SCALES = ("shared", "per-filter")
VIEWS = ("rgb", "channel", "mean")
NORMS = ("l1", "l2")


@dataclass(frozen=True)
class ConvInfo:
    """One convolution layer."""

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    groups: int
    params: int

    @property
    def label(self) -> str:
        g = f", groups {self.groups}" if self.groups > 1 else ""
        return (f"{self.name} ({self.in_channels}→{self.out_channels}, "
                f"{self.kernel[0]}×{self.kernel[1]}{g})")


@dataclass
class FilterGrid:
    """A rendered filter grid.

    Attributes:
        image: ``H×W×3`` uint8 grid.
        order: Filter indices in display order.
        norms: Norm of every filter (index = filter number), by the chosen criterion.
        view: The view actually drawn ("rgb", "channel" or "mean").
        note: What the colours mean.
    """

    image: np.ndarray
    order: np.ndarray
    norms: np.ndarray
    view: str
    note: str


def conv_layers(model: nn.Module) -> list[ConvInfo]:
    """Every ``nn.Conv2d`` of the model, in module order."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight
            out.append(ConvInfo(name, m.in_channels, m.out_channels, tuple(m.kernel_size), m.groups,
                                int(w.numel() + (m.bias.numel() if m.bias is not None else 0))))
    return out


def conv_weight(model: nn.Module, name: str) -> np.ndarray:
    """The weight ``out×in/groups×kh×kw`` of conv layer ``name`` as float64 numpy (a copy)."""
    m = model.get_submodule(name)
    if not isinstance(m, nn.Conv2d):
        raise ValueError(_("{name} is not a Conv2d layer").format(name=repr(name)))
    w = m.weight.detach()
    if w.is_quantized:
        w = w.dequantize()
    return w.cpu().double().numpy().copy()


def filter_norms(weight: np.ndarray, norm: str = "l1") -> np.ndarray:
    """Per-filter (output channel) L1 or L2 norm of a conv weight — the usual filter-pruning criterion."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    flat = np.abs(weight.reshape(weight.shape[0], -1))
    return flat.sum(1) if norm == "l1" else np.sqrt((flat ** 2).sum(1))


def filter_order(norms: np.ndarray, sort: str = "none") -> np.ndarray:
    """Filter indices: module order ("none"), or by norm ("ascending", "descending"; ties keep order)."""
    idx = np.arange(len(norms))
    if sort == "ascending":
        return np.argsort(norms, kind="stable")
    if sort == "descending":
        return np.argsort(-norms, kind="stable")
    if sort != "none":
        raise ValueError(f"sort must be none, ascending or descending, got {sort!r}")
    return idx


def diverging_rgb(a: np.ndarray) -> np.ndarray:
    """Values in ``[-1, 1]`` to blue (negative) – white (zero) – red (positive); returns ``…×3`` floats 0–1."""
    a = np.clip(np.asarray(a, dtype=np.float64), -1, 1)
    pos, neg = np.clip(a, 0, 1), np.clip(-a, 0, 1)
    return np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)


def _scaled(filters: np.ndarray, scale: str) -> np.ndarray:
    """Divide by max |w| (shared over all shown filters, or per filter): result in ``[-1, 1]``."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    axes = tuple(range(1, filters.ndim))
    m = np.abs(filters).max() if scale == "shared" else np.abs(filters).max(axis=axes, keepdims=True)
    m = np.where(m > 0, m, 1.0)
    return filters / m


def _upscale(im: np.ndarray, size: int) -> np.ndarray:
    s = max(1, size // max(im.shape[:2]))
    return im.repeat(s, 0).repeat(s, 1)


def filter_images(weight: np.ndarray, view: str = "channel", channel: int = 0, scale: str = "shared") -> list[np.ndarray]:
    """Filters as ``kh×kw×3`` float images in 0–1.

    Args:
        weight: ``out×in×kh×kw``.
        view: "rgb" (3 input channels drawn in colour, zero is mid grey), "channel" (one input channel,
            blue–white–red), or "mean" (mean over input channels, blue–white–red).
        channel: Input channel for the "channel" view.
        scale: "shared" (one scale for all filters: magnitudes comparable) or "per-filter".
    """
    if view == "rgb":
        if weight.shape[1] != 3:
            raise ValueError(_("the colour view needs 3 input channels, this layer has {n}").format(n=weight.shape[1]))
        s = _scaled(weight, scale)
        return [np.clip(0.5 + 0.5 * f.transpose(1, 2, 0), 0, 1) for f in s]
    if view == "channel":
        if not 0 <= channel < weight.shape[1]:
            raise ValueError(_("input channel {channel} out of range 0–{last}").format(channel=channel,
                                                                                   last=weight.shape[1] - 1))
        planes = weight[:, channel]
    elif view == "mean":
        planes = weight.mean(axis=1)
    else:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    return list(diverging_rgb(_scaled(planes, scale)))


def filter_grid(weight: np.ndarray, view: str = "channel", channel: int = 0, scale: str = "shared",
                norm: str = "l1", sort: str = "none", max_filters: int = 64, cell: int = 48,
                ncols: int = 16) -> FilterGrid:
    """A grid image of (up to ``max_filters``) filters of one conv weight, ordered by ``sort`` on ``norm``."""
    norms = filter_norms(weight, norm)
    order = filter_order(norms, sort)[:max_filters]
    ims = filter_images(weight[order], view, channel, scale)
    tiles = [_upscale((im * 255).round().astype(np.uint8), cell) for im in ims]
    note = (_("colour: input channels R, G, B; mid grey is zero") if view == "rgb"
            else _("red positive, blue negative, white zero"))
    note += _("; one colour scale for all filters") if scale == "shared" else _("; each filter scaled to its own max |w|")
    return FilterGrid(grid(tiles, ncols=min(ncols, len(tiles)), fill=160), order, norms, view, note)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers (modules with a weight of 2 or more dimensions)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim >= 2]


def _weight(m: nn.Module) -> torch.Tensor:
    w = m.weight.detach()
    return (w.dequantize() if w.is_quantized else w).float()


# The columns of :func:`weight_table` for the reader (keys stay as they are; pages rename with _()).
WEIGHT_COLUMNS = {"layer": N_("layer"), "type": N_("type"), "shape": N_("shape"), "params": N_("params"),
                  "mean": N_("mean"), "std": N_("std"), "max |w|": N_("max |w|"), "near zero": N_("near zero"),
                  "exact zeros": N_("exact zeros")}


def weight_table(model: nn.Module, near_zero: float = 0.01) -> list[dict]:
    """One row per conv/linear layer: shape, parameters, mean, std, fraction near zero, exact zeros.

    Args:
        near_zero: A weight counts as near zero when ``|w| <= near_zero * max|w|`` of its layer.
    """
    rows = []
    for name, m in weight_layers(model):
        w = _weight(m)
        a = w.abs()
        amax = float(a.max()) if w.numel() else 0.0
        std, mean = torch.std_mean(w) if w.numel() > 1 else (torch.tensor(0.0), w.mean())
        bias = getattr(m, "bias", None)
        nb = bias.numel() if isinstance(bias, torch.Tensor) else 0
        rows.append({"layer": name, "type": type(m).__name__, "shape": "×".join(map(str, w.shape)),
                     "params": int(w.numel() + nb), "mean": float(mean), "std": float(std), "max |w|": amax,
                     "near zero": float((a <= near_zero * amax).sum()) / max(1, w.numel()),
                     "exact zeros": float((a == 0).sum()) / max(1, w.numel())})
    return rows


def weight_histogram(model: nn.Module, name: str, bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Histogram ``(counts, edges)`` of one layer's weights over their full range."""
    w = _weight(model.get_submodule(name)).flatten()
    lo, hi = float(w.min()), float(w.max())
    if hi <= lo:
        hi = lo + 1e-12
    counts = torch.histc(w, bins=bins, min=lo, max=hi)
    return counts.numpy().astype(np.int64), np.linspace(lo, hi, bins + 1)


def histogram_figure(hists: dict[str, tuple[np.ndarray, np.ndarray]], ncols: int = 4, title: str = "",
                     height_per_row: int = 170) -> go.Figure:
    """Small multiples: one bar histogram per entry ``{label: (counts, edges)}``."""
    n = max(1, len(hists))
    nrows = (n + ncols - 1) // ncols
    fig = make_subplots(rows=nrows, cols=min(ncols, n), subplot_titles=list(hists)[:n] or [""])
    for i, (label, (counts, edges)) in enumerate(hists.items()):
        r, c = divmod(i, ncols)
        centers = (edges[:-1] + edges[1:]) / 2
        fig.add_trace(go.Bar(x=centers, y=counts, width=np.diff(edges), name=label, showlegend=False,
                             marker_line_width=0, marker_color="#3b6fb6"), row=r + 1, col=c + 1)
    fig.update_layout(height=max(220, nrows * height_per_row), margin=dict(l=10, r=10, t=40, b=10),
                      title=title or None, bargap=0, separators=i18n.plotly_separators())
    fig.update_annotations(font_size=11)
    return fig
