"""Reading user images safely and converting them to what a dataset's model expects."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from nnlab.i18n import _

if TYPE_CHECKING:
    import torch

MAX_PIXELS = 40_000_000  # refuse larger images before decoding them (decompression bombs)
MAX_BYTES = 50 * 1024 * 1024


class ImageError(ValueError):
    """An image that cannot be used, with a message meant for the user."""


def _open_checked(fp) -> Image.Image:
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageError(_("image refused: it would decode to too many pixels ({exc})").format(exc=exc)) from exc
    except Exception as exc:
        raise ImageError(_("not a readable image ({error})").format(error=type(exc).__name__)) from exc
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ImageError(_("image refused: {w}×{h} pixels is over the limit of {limit:,} pixels").format(
            w=w, h=h, limit=MAX_PIXELS))
    if w < 2 or h < 2:
        raise ImageError(_("image too small: {w}×{h} pixels").format(w=w, h=h))
    try:
        im.load()
    except Exception as exc:
        raise ImageError(_("the image data is damaged or truncated ({error})").format(
            error=type(exc).__name__)) from exc
    return im


def load_image_file(path: str | Path) -> Image.Image:
    """Open an image file after checking its byte size and pixel count."""
    p = Path(path)
    if p.stat().st_size > MAX_BYTES:
        raise ImageError(_("{name} is larger than {value} MiB").format(name=p.name, value=MAX_BYTES // 2**20))
    with open(p, "rb") as f:
        return _open_checked(io.BytesIO(f.read()))


def load_image_bytes(data: bytes) -> Image.Image:
    """Open an uploaded image from bytes after checking byte size and pixel count."""
    if not data:
        raise ImageError(_("the file is empty"))
    if len(data) > MAX_BYTES:
        raise ImageError(_("image larger than {value} MiB").format(value=MAX_BYTES // 2**20))
    return _open_checked(io.BytesIO(data))


def to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode (RGBA, P, CMYK, I;16, LA …) to "L" or "RGB"; alpha is composited on white."""
    im = ImageOps.exif_transpose(im) if hasattr(im, "getexif") else im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        im = Image.fromarray(a.astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        im = Image.fromarray(a.astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im.convert("RGBA"))
    return im.convert("L" if channels == 1 else "RGB")


def prepare_image(im: Image.Image, input_shape: tuple[int, int, int], invert: bool = False) -> torch.Tensor:
    """Convert and resize a PIL image to a uint8 tensor ``1×C×H×W`` matching ``input_shape``.

    Args:
        im: The image, in any mode.
        input_shape: ``(C, H, W)`` the dataset uses.
        invert: Invert intensities (dark-on-light photos for a light-on-dark dataset such as Fashion-MNIST).
    """
    import torch  # here, not at the top: decode workers use this module without torch

    c, h, w = input_shape
    if c not in (1, 3):
        raise ImageError(_("models with {c} input channels are not supported for uploaded images").format(c=c))
    im = to_mode(im, c).resize((w, h), Image.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    if invert:
        a = 255 - a
    a = a[None] if c == 1 else a.transpose(2, 0, 1)
    return torch.from_numpy(a.copy()).unsqueeze(0)
