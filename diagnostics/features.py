"""Feature maps: what each layer outputs for an input, and which dataset samples excite a channel most.

All forward passes run on a private deep copy of the model, so the shared model never carries a hook.

Layer outputs come in several layouts, and every map is shown channel-first (``C×H×W``):

* ``"chw"``: ``N×C×H×W`` (convolutions);
* ``"hwc"``: ``N×H×W×C`` (channels-last blocks: timm's ConvNeXt MLPs and LayerNorms, Swin);
* ``"tokens"``: ``N×T×D`` of a vision transformer: the patch tokens are laid out as their grid
  (``D×rows×cols``), the class/prefix tokens left out;
* ``"vector"``: ``N×C``; ``"other"``: anything else (shown as is).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from diagnostics.filters import diverging_rgb
from diagnostics.hooks import capture_outputs, forward_hooks, run_until_captured
from nnlab.data.inputs import input_from_dataset, input_from_upload  # noqa: F401 - part of this module's interface
from nnlab.data.sets import ImageDataset
from nnlab.data.viz import grid
from nnlab.i18n import _
from nnlab.models.archinfo import TokenLayout, token_layout

REDUCTIONS = ("max", "mean")
LAYOUTS = ("chw", "hwc", "tokens", "vector", "other")
_CHANNEL_FIRST = (nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                  nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class LayerInfo:
    """A layer and the shape of its output for one input, channel-first (``C×H×W``, or ``C``).

    Attributes:
        layout: How the layer really lays out its output (see the module docstring); ``shape`` is after
            conversion to channel-first (a ViT block's ``197×192`` tokens are ``192×14×14``).
    """

    name: str
    type: str
    shape: tuple[int, ...]
    layout: str = "chw"

    @property
    def label(self) -> str:
        how = {"tokens": " " + _("(patch tokens as a grid)"), "hwc": " " + _("(channels-last, shown channel-first)")}
        return f"{self.name} · {self.type} → {'×'.join(map(str, self.shape))}{how.get(self.layout, '')}"


def _plausible(h: int, w: int, input_hw: tuple[int, int]) -> bool:
    """Whether ``h×w`` can be a spatial map of an ``input_hw`` image (about the same stride on both sides)."""
    big_h, big_w = input_hw
    if h < 1 or w < 1 or h > big_h or w > big_w:
        return False
    sh, sw = big_h / h, big_w / w
    return abs(sh - sw) <= 0.25 * max(sh, sw)


def _channels(module: nn.Module) -> int | None:
    for attr in ("out_channels", "num_features", "out_features", "num_channels"):
        v = getattr(module, attr, None)
        if isinstance(v, int):
            return v
    shape = getattr(module, "normalized_shape", None)
    return int(shape[-1]) if shape else None


def output_layout(module: nn.Module, t: torch.Tensor, input_hw: tuple[int, int],
                  tokens: TokenLayout | None = None) -> str:
    """The layout of one layer's output ``t`` (batch first) for an input of ``input_hw`` pixels.

    Convolutions, batch/group norms and 2-D pooling are channel-first; a Linear applied to a 4-D tensor is
    channels-last; other layers are judged by which pair of dimensions can be the spatial map, and by their
    channel count (e.g. a LayerNorm over the last dimension) where both can.
    """
    if t.ndim == 2:
        return "vector"
    if t.ndim == 3:
        return "tokens" if tokens is not None and tokens.matches(int(t.shape[1]), input_hw) else "other"
    if t.ndim != 4:
        return "other"
    if isinstance(module, _CHANNEL_FIRST):
        return "chw"
    if isinstance(module, nn.Linear):
        return "hwc"
    _n, a, b, c = (int(v) for v in t.shape)
    chw, hwc = _plausible(b, c, input_hw), _plausible(a, b, input_hw)
    if chw != hwc:
        return "chw" if chw else "hwc"
    ch = _channels(module)
    return "hwc" if chw and ch is not None and ch == c and ch != a else "chw"


def to_map(t: torch.Tensor, layout: str, input_hw: tuple[int, int], tokens: TokenLayout | None = None) \
        -> torch.Tensor:
    """A layer output (batch first) to channel-first maps ``N×C×H×W`` (tokens: patch grid, prefix left out)."""
    if layout == "hwc":
        return t.permute(0, 3, 1, 2)
    if layout == "tokens" and tokens is not None:
        return tokens.to_map(t, input_hw)
    return t


def channels_first(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A layer output with its channel dimension moved to dimension 1 (tokens: ``N×D×T``, all tokens kept)."""
    if layout == "hwc":
        return t.permute(0, 3, 1, 2)
    if layout == "tokens":
        return t.transpose(1, 2)
    return t


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode: hooks and gradient tricks happen on it, never on the shared model."""
    return copy.deepcopy(model).eval()


def layer_shapes(model: nn.Module, input_shape: tuple[int, int, int], leaves_only: bool = False,
                 copy_model: bool = True) -> list[LayerInfo]:
    """Output shape (without batch) of every named submodule for one dummy input, in module order.

    Args:
        leaves_only: Keep only modules without children (otherwise blocks such as ``layer1`` too).
        copy_model: Hook a private copy (set False only for a model you own).
    """
    m = private_copy(model) if copy_model else model
    mods = [(n, mod) for n, mod in m.named_modules() if n and (not leaves_only or next(mod.children(), None) is None)]
    hw = tuple(input_shape[1:])
    tokens = token_layout(m)
    found: dict[str, tuple[tuple[int, ...], str]] = {}

    def make(name: str):
        def fn(module: nn.Module, inputs: tuple, output: object) -> None:
            t = output[0] if isinstance(output, (tuple, list)) and output else output
            if isinstance(t, torch.Tensor):
                layout = output_layout(module, t, hw, tokens)
                found[name] = (tuple(int(v) for v in to_map(t, layout, hw, tokens).shape[1:]), layout)
        return fn

    with forward_hooks(m, {n: make(n) for n, _m in mods}), torch.no_grad():
        m(torch.zeros(1, *input_shape, device=_device(m)))
    return [LayerInfo(n, type(mod).__name__, *found[n]) for n, mod in mods if n in found]


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def feature_maps(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Output of ``layer`` for one normalised input ``1×C×H×W`` (or ``C×H×W``): ``C'×H'×W'`` (or ``C'``).

    Channels-last outputs are returned channel-first, a vision transformer's tokens as the map of its patch
    tokens (``D×rows×cols``).
    """
    if x.ndim == 3:
        x = x.unsqueeze(0)
    m = private_copy(model)
    with capture_outputs(m, [layer], stop_early=True) as store:
        run_until_captured(m, x.to(_device(m)), store)
        if layer not in store:
            raise ValueError(_("layer {layer} produced no tensor output for this input").format(layer=repr(layer)))
        t = store[layer]
    hw, tokens = tuple(x.shape[-2:]), token_layout(m)
    return to_map(t, output_layout(m.get_submodule(layer), t, hw, tokens), hw, tokens)[0].cpu()


def feature_grid(maps: torch.Tensor, scale: str = "per-channel", max_channels: int = 64, cell: int = 64,
                 ncols: int = 8, order: np.ndarray | None = None) -> np.ndarray:
    """Channels of one feature map ``C×H×W`` as a grid image.

    Args:
        scale: "per-channel" (each map stretched to its own min–max, grey) or "shared" (one symmetric
            scale for all channels: red positive, blue negative, white zero).
        order: Channel indices to show (default: the first ``max_channels``).
    """
    a = maps.detach().cpu().double().numpy()
    if a.ndim == 1:
        a = a[:, None, None]
    idx = np.arange(len(a)) if order is None else np.asarray(order)
    a = a[idx[:max_channels]]
    tiles = []
    if scale == "shared":
        m = np.abs(a).max() or 1.0
        rgb = diverging_rgb(a / m)
        tiles = [(t * 255).round().astype(np.uint8) for t in rgb]
    elif scale == "per-channel":
        for ch in a:
            lo, hi = ch.min(), ch.max()
            g = (ch - lo) / (hi - lo) if hi > lo else np.zeros_like(ch)
            tiles.append(np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=2))
    else:
        raise ValueError(f"scale must be per-channel or shared, got {scale!r}")
    s = max(1, cell // max(tiles[0].shape[:2])) if tiles else 1
    tiles = [t.repeat(s, 0).repeat(s, 1) for t in tiles]
    return grid(tiles, ncols=max(1, min(ncols, len(tiles))))


def channel_scores(model: nn.Module, data: ImageDataset, layer: str, split: str = "test", limit: int = 2000,
                   reduce: str = "max", batch_size: int = 128,
                   progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Activation score of every channel of ``layer`` for the first ``limit`` samples: ``N×C``.

    Args:
        reduce: "max" (strongest spatial response) or "mean" (average over positions).
        progress: Called with the fraction done after each batch.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    n = min(limit, len(data.labels(split)))
    m = private_copy(model)
    module, hw, tokens = m.get_submodule(layer), tuple(data.input_shape[1:]), token_layout(m)

    def red(t: torch.Tensor) -> torch.Tensor:
        t = to_map(t, output_layout(module, t, hw, tokens), hw, tokens)
        if t.ndim <= 2:
            return t.reshape(t.shape[0], -1)
        flat = t.flatten(2)
        return flat.amax(2) if reduce == "max" else flat.mean(2)

    dev = _device(m)
    out = []
    with capture_outputs(m, [layer], stop_early=True, transform=red) as store:
        done = 0
        for x, _y in data.batches(split, batch_size, indices=np.arange(n)):
            run_until_captured(m, x.to(dev), store)
            if layer not in store:
                raise ValueError(_("layer {layer} produced no tensor output").format(layer=repr(layer)))
            out.append(store[layer].cpu())
            done += len(x)
            if progress:
                progress(done / max(1, n))
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def top_activating(scores: np.ndarray, channel: int, k: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` samples with the highest score for ``channel`` (ties: lower index first)."""
    col = scores[:, channel]
    idx = np.argsort(-col, kind="stable")[:k]
    return idx, col[idx]
