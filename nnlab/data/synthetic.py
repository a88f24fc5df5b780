"""A generated ImageFolder of coloured shapes: a real-sized RGB dataset for tests, benchmarks and demos offline.

Ten classes, one per shape; colour, position, size, rotation and background vary at random (seeded), so the
class is the shape alone. Files are written as JPEG or PNG in class subfolders, like a user's own folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nnlab.i18n import _

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring", "diamond", "hexagon", "hbar", "vbar")


def _polygon(n: int, cx: float, cy: float, r: float, rot: float, inner: float | None = None) -> list[tuple]:
    pts = []
    steps = n * 2 if inner else n
    for k in range(steps):
        rr = (inner if inner and k % 2 else 1.0) * r
        a = rot + 2 * math.pi * k / steps
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``shape`` at ``size``×``size`` with random colours, placement and rotation."""
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(int((v + 128) % 256) for v in bg)  # far from the background in every channel
    fg = tuple(int(np.clip(v + rng.integers(-40, 41), 0, 255)) for v in fg)
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = size * rng.uniform(0.22, 0.32)
    cx = size / 2 + rng.uniform(-0.12, 0.12) * size
    cy = size / 2 + rng.uniform(-0.12, 0.12) * size
    rot = rng.uniform(0, 2 * math.pi)
    box = (cx - r, cy - r, cx + r, cy + r)
    w = max(2, int(r * 0.35))
    if shape == "circle":
        d.ellipse(box, fill=fg)
    elif shape == "ring":
        d.ellipse(box, outline=fg, width=w)
    elif shape == "square":
        d.polygon(_polygon(4, cx, cy, r * 1.2, rot), fill=fg)
    elif shape == "diamond":
        d.polygon([(cx, cy - r * 1.3), (cx + r * 0.7, cy), (cx, cy + r * 1.3), (cx - r * 0.7, cy)], fill=fg)
    elif shape == "triangle":
        d.polygon(_polygon(3, cx, cy, r * 1.2, rot), fill=fg)
    elif shape == "hexagon":
        d.polygon(_polygon(6, cx, cy, r * 1.1, rot), fill=fg)
    elif shape == "star":
        d.polygon(_polygon(5, cx, cy, r * 1.3, rot, inner=0.45), fill=fg)
    elif shape == "cross":
        d.rectangle((cx - r, cy - w / 2, cx + r, cy + w / 2), fill=fg)
        d.rectangle((cx - w / 2, cy - r, cx + w / 2, cy + r), fill=fg)
    elif shape == "hbar":
        d.rectangle((cx - r * 1.3, cy - w / 2, cx + r * 1.3, cy + w / 2), fill=fg)
    elif shape == "vbar":
        d.rectangle((cx - w / 2, cy - r * 1.3, cx + w / 2, cy + r * 1.3), fill=fg)
    else:
        raise ValueError(_("unknown shape {shape!r}").format(shape=shape))
    noise = rng.normal(0, 6, (size, size, 3))
    a = np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def make_shapes_folder(root: str | Path, per_class: int = 150, size: int = 256, seed: int = 0,
                       classes: int = 10, fmt: str = "JPEG", split: bool = False) -> Path:
    """Write ``classes``×``per_class`` images into ``root/<shape>/<i>.jpg`` (or ``root/train|test/<shape>/…``
    with an 80/20 split when ``split``); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    ext = ".jpg" if fmt.upper() == "JPEG" else ".png"
    for c, shape in enumerate(SHAPES[:classes]):
        for i in range(per_class):
            part = ("train" if i < int(per_class * 0.8) else "test") if split else ""
            folder = root / part / shape if part else root / shape
            folder.mkdir(parents=True, exist_ok=True)
            draw_shape(shape, size, rng).save(folder / f"{shape}_{i:05d}{ext}", fmt, **(
                {"quality": 92} if fmt.upper() == "JPEG" else {}))
    return root
