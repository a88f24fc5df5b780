"""The data set of the beyond-the-peers benchmark: coloured shapes at 224 px, the class is the shape.

Light on imports (numpy, PIL, torch, nnlab.data.sets) so that ``bench/beyond_base.py`` can build the same images on a
machine without OpenVINO or NNCF (the GPU machine that trains the base model).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from nnlab.data.sets import ImageDataset

CLASSES = ("circle", "square", "triangle", "cross")
SIZE = 224


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif kind == "triangle":
        pts = [(0, -1.2), (1.05, 0.65), (-1.05, 0.65)]
    else:  # cross: a plus sign of arm width 0.4 r
        w = 0.35
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
               (-w, -w)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def shapes_dataset(per_class_train: int, per_class_test: int, seed: int = 0) -> ImageDataset:
    """Coloured shapes at 224×224: the class is the shape; colours, size, place, rotation and noise are random."""
    g = np.random.default_rng(seed)

    def image(kind: str) -> np.ndarray:
        bg = g.integers(0, 256, 3)
        fg = g.integers(0, 256, 3)
        while np.abs(fg.astype(int) - bg.astype(int)).sum() < 180:  # keep the shape visible
            fg = g.integers(0, 256, 3)
        im = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in bg))
        d = ImageDraw.Draw(im)
        r = float(g.uniform(28, 70))
        cx, cy = (float(v) for v in g.uniform(r + 4, SIZE - r - 4, 2))
        if kind == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in fg))
        else:
            d.polygon(_polygon(kind, cx, cy, r, float(g.uniform(0, 2 * math.pi))), fill=tuple(int(v) for v in fg))
        a = np.asarray(im, np.int16) + g.integers(-20, 21, (SIZE, SIZE, 3))
        return np.clip(a, 0, 255).astype(np.uint8).transpose(2, 0, 1)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ys = np.repeat(np.arange(len(CLASSES)), n)
        g.shuffle(ys)
        return torch.from_numpy(np.stack([image(CLASSES[y]) for y in ys])), torch.from_numpy(ys.astype(np.int64))

    xtr, ytr = split(per_class_train)
    xte, yte = split(per_class_test)
    return ImageDataset(id="shapes224", name="coloured shapes 224", source="generated", classes=list(CLASSES),
                        x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
