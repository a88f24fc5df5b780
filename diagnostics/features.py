"""Feature maps: what each layer outputs for an input, and which dataset samples excite a channel most.

All forward passes run on a private deep copy of the model, so the shared model never carries a hook.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from diagnostics.filters import diverging_rgb
from diagnostics.hooks import capture_outputs, run_until_captured
from nnlab.data import ImageDataset
from nnlab.images import load_image_bytes, prepare_image
from nnlab.viz import grid

REDUCTIONS = ("max", "mean")


@dataclass(frozen=True)
class LayerInfo:
    """A layer whose output is a feature map ``C×H×W`` (or a vector ``C``)."""

    name: str
    type: str
    shape: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.name} · {self.type} → {'×'.join(map(str, self.shape))}"


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
    with capture_outputs(m, [n for n, _ in mods], transform=lambda t: torch.tensor(t.shape[1:])) as store:
        with torch.no_grad():
            m(torch.zeros(1, *input_shape, device=_device(m)))
        shapes = dict(store)
    return [LayerInfo(n, type(mod).__name__, tuple(int(v) for v in shapes[n])) for n, mod in mods if n in shapes]


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def feature_maps(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Output of ``layer`` for one normalised input ``1×C×H×W`` (or ``C×H×W``): ``C'×H'×W'`` (or ``C'``)."""
    if x.ndim == 3:
        x = x.unsqueeze(0)
    m = private_copy(model)
    with capture_outputs(m, [layer], stop_early=True) as store:
        run_until_captured(m, x.to(_device(m)), store)
        if layer not in store:
            raise ValueError(f"layer {layer!r} produced no tensor output for this input")
        return store[layer][0].cpu()


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

    def red(t: torch.Tensor) -> torch.Tensor:
        if t.ndim <= 2:
            return t.reshape(t.shape[0], -1)
        flat = t.flatten(2)
        return flat.amax(2) if reduce == "max" else flat.mean(2)

    m = private_copy(model)
    dev = _device(m)
    out = []
    with capture_outputs(m, [layer], stop_early=True, transform=red) as store:
        done = 0
        for x, _ in data.batches(split, batch_size, indices=np.arange(n)):
            run_until_captured(m, x.to(dev), store)
            if layer not in store:
                raise ValueError(f"layer {layer!r} produced no tensor output")
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


def input_from_upload(blob: bytes, data: ImageDataset, invert: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """An uploaded image as the model sees it: ``(uint8 1×C×H×W, normalised float 1×C×H×W)``.

    Through the model's own preprocessing (mode conversion, resize, crop, mean/std: what every page feeds it).
    A model seen at the dataset's native size (the demo CNN) has no resize step of its own: the upload, of any
    mode and size, is converted to its channels and squashed to its size.

    Raises:
        nnlab.images.ImageError: unreadable, empty, oversized images, with a message for the user.
    """
    im = load_image_bytes(blob)
    pre = data.preprocessing
    if pre.resize_mode == "none":
        x8 = prepare_image(im, data.input_shape, invert=invert)
    else:
        a = pre.to_uint8(im)
        x8 = torch.from_numpy(255 - a if invert else a).unsqueeze(0)
    return x8, data.normalize(x8)


def input_from_dataset(data: ImageDataset, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A dataset sample: ``(uint8 1×C×H×W, normalised 1×C×H×W, label)``."""
    n = len(data.labels(split))
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range 0–{n - 1} for the {split} split")
    x8 = data.images(split)[index:index + 1]
    return x8, data.normalize(x8), int(data.labels(split)[index])
