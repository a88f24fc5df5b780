"""Small display helpers shared by pages: uint8 images to viewable arrays and grids (no streamlit)."""

from __future__ import annotations

import numpy as np
import torch


def as_image(x: torch.Tensor | np.ndarray, scale: int = 1) -> np.ndarray:
    """One image ``C×H×W`` (uint8, or float in 0–1) to ``H×W×3`` uint8, upscaled ``scale``× by nearest neighbour."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = a[None]
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a[:3]
    a = a.transpose(1, 2, 0)
    if scale > 1:
        a = a.repeat(scale, axis=0).repeat(scale, axis=1)
    return np.ascontiguousarray(a)


def display_scale(height: int, target: int = 112) -> int:
    """Integer upscale factor that brings an image of ``height`` pixels near ``target``."""
    return max(1, target // max(1, height))


def grid(images: list[np.ndarray], ncols: int = 8, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile equally sized ``H×W×3`` images into one array, ``ncols`` per row."""
    if not images:
        return np.full((1, 1, 3), fill, np.uint8)
    h, w = images[0].shape[:2]
    nrows = (len(images) + ncols - 1) // ncols
    out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), fill, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out


def normalize_map(a: np.ndarray, symmetric: bool = False) -> np.ndarray:
    """Scale a 2-D map to 0–1 (symmetric: 0.5 is zero) for display."""
    a = np.asarray(a, dtype=np.float64)
    if symmetric:
        m = np.abs(a).max()
        return 0.5 + 0.5 * a / m if m > 0 else np.full_like(a, 0.5)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
