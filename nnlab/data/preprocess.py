"""The model's preprocessing: how a file becomes the tensor the model was trained on.

A :class:`Preprocessing` travels with the model (its record, every export) and is applied the same way by
every page, the data cache and the training loop. It is split in two halves so that the expensive half runs
once and is cached on disk:

* :meth:`Preprocessing.to_uint8` — mode conversion, resize, crop: a PIL image becomes a ``C×H×W`` uint8 array.
  It follows torchvision's ``ImageFolder`` loader (``Image.convert("RGB")``) and its eval transforms
  (``Resize`` of the shorter side, ``CenterCrop``) operation for operation, so the result is pixel-identical
  to ``Weights.transforms()`` and timm's ``create_transform(**resolve_data_config(...))``.
* :meth:`Preprocessing.normalize` — ``x / 255``, then ``(x − mean) / std`` per channel, in float32, on batches.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from nnlab.i18n import _

if TYPE_CHECKING:
    import torch

INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                  "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
RESIZE_MODES = ("shorter", "squash", "none")
CONVERSIONS = ("pil", "scaled")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PreprocessingError(ValueError):
    """A preprocessing setting that cannot be used, with a message meant for the user."""


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects, from file to tensor.

    Attributes:
        size: ``(H, W)`` of the model's input (after the crop).
        channels: 1 (greyscale) or 3 (RGB).
        resize_mode: ``"shorter"``: the shorter side becomes ``resize`` (aspect kept, torchvision's
            ``Resize(int)``); ``"squash"``: both sides become ``resize`` (timm's ``crop_mode="squash"``);
            ``"none"``: no resize.
        resize: Target of the shorter side (``"shorter"``), or of both sides (``"squash"``); 0 with ``"none"``.
        crop: ``"center"`` crops ``size`` from the centre (padding with zeros where the image is smaller, as
            torchvision does); ``"none"`` expects the resized image to be ``size`` already.
        interpolation: PIL filter of the resize (``"bilinear"``, ``"bicubic"`` …).
        mean: Per-channel mean on the 0–1 scale.
        std: Per-channel standard deviation on the 0–1 scale.
        convert: ``"pil"``: PIL's own mode conversion (what torchvision's loader does: 16-bit values clip at
            255, alpha is dropped); ``"scaled"``: 16-bit and float images are scaled to 0–255 and alpha is
            composited on white (for photos of objects on transparent backgrounds).
        source: Where the settings came from ("torchvision ResNet18_Weights.IMAGENET1K_V1", "timm …",
            "dataset statistics", "edited").
    """

    size: tuple[int, int]
    channels: int = 3
    resize_mode: str = "shorter"
    resize: int = 0
    crop: str = "center"
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    convert: str = "pil"
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in (self.size if isinstance(self.size, (tuple, list)) else (self.size,) * 2))
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "resize", int(self.resize))
        object.__setattr__(self, "channels", int(self.channels))
        if len(size) != 2 or min(size) < 1 or max(size) > 4096:
            raise PreprocessingError(_("input size must be two sides between 1 and 4096 pixels, got {size}").format(
                size=self.size))
        if self.channels not in (1, 3):
            raise PreprocessingError(_("channels must be 1 or 3, got {channels}").format(channels=self.channels))
        if self.resize_mode not in RESIZE_MODES:
            raise PreprocessingError(_("resize mode must be one of {choices}, got {resize_mode!r}").format(
                choices=', '.join(RESIZE_MODES), resize_mode=self.resize_mode))
        if self.resize_mode != "none" and not (1 <= self.resize <= 8192):
            raise PreprocessingError(_("resize must be between 1 and 8192 pixels, got {resize}").format(
                resize=self.resize))
        if self.crop not in ("center", "none"):
            raise PreprocessingError(_("crop must be 'center' or 'none', got {crop!r}").format(crop=self.crop))
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessingError(_("interpolation must be one of {choices}, got {interpolation!r}").format(
                choices=', '.join(INTERPOLATIONS), interpolation=self.interpolation))
        if self.convert not in CONVERSIONS:
            raise PreprocessingError(_("convert must be one of {choices}, got {convert!r}").format(
                choices=', '.join(CONVERSIONS), convert=self.convert))
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise PreprocessingError(_("mean and std need {channels} values each, got {n_mean} and {n_std}").format(
                channels=self.channels, n_mean=len(self.mean), n_std=len(self.std)))
        if any(not math.isfinite(s) or s <= 0 for s in self.std) or any(not math.isfinite(m) for m in self.mean):
            raise PreprocessingError(_("std values must be positive and mean values finite"))

    # --- identity ---------------------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one model input."""
        return (self.channels, *self.size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"], d["mean"], d["std"] = list(self.size), list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as exc:
            raise PreprocessingError(_("not a preprocessing description: {exc}").format(exc=exc)) from exc

    def pixel_key(self) -> str:
        """A short hash of what decides the cached uint8 pixels (size, channels, resize, crop, conversion).

        Mean and std are applied on the fly, so two models that differ only there share one data cache.
        """
        d = {k: v for k, v in self.to_dict().items() if k not in ("mean", "std", "source")}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def key(self) -> str:
        """A short hash of everything (the pixels and the normalisation)."""
        d = {k: v for k, v in self.to_dict().items() if k != "source"}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line for pages and exports, in the current language."""
        h, w = self.size
        if self.resize_mode == "shorter":
            geo = _("shorter side → {resize} px ({interpolation}), ").format(resize=self.resize,
                                                                            interpolation=self.interpolation)
        elif self.resize_mode == "squash":
            geo = _("resize to {resize}×{resize} ({interpolation}), ").format(resize=self.resize,
                                                                              interpolation=self.interpolation)
        else:
            geo = _("no resize, ")
        geo += _("centre crop {h}×{w}").format(h=h, w=w) if self.crop == "center" else f"{h}×{w}"
        mean = ", ".join(f"{v:.3f}" for v in self.mean)
        std = ", ".join(f"{v:.3f}" for v in self.std)
        mode = "RGB" if self.channels == 3 else _("greyscale")
        return _("{mode}, {geometry}; normalised with mean ({mean}), std ({std})").format(
            mode=mode, geometry=geo, mean=mean, std=std)

    def with_changes(self, **changes: Any) -> Preprocessing:
        """A validated copy with some settings changed (marked as edited)."""
        return replace(self, **changes, source=changes.get("source", "edited"))

    # --- the pixel half ---------------------------------------------------------------------------------

    def convert_mode(self, im: Image.Image) -> Image.Image:
        """Any PIL mode to "L" or "RGB", the way ``convert`` says."""
        target = "L" if self.channels == 1 else "RGB"
        if self.convert == "scaled":
            from nnlab.data.images import to_mode

            return to_mode(im, self.channels)
        return im if im.mode == target else im.convert(target)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(W, H)`` after the resize step (torchvision's arithmetic for the shorter side)."""
        if self.resize_mode == "none":
            return width, height
        if self.resize_mode == "squash":
            return self.resize, self.resize
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def geometry(self, im: Image.Image) -> Image.Image:
        """Resize and crop a PIL image already in the right mode (torchvision's Resize + CenterCrop on PIL)."""
        w, h = im.size
        nw, nh = self.resized_size(w, h)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), INTERPOLATIONS[self.interpolation])
        if self.crop == "none":
            if im.size != (self.size[1], self.size[0]):
                raise PreprocessingError(_("the image is {value}×{value2} after resizing, the model needs "
                                           "{value3}×{value4}; choose a centre crop or another resize").format(
                    value=im.size[0], value2=im.size[1], value3=self.size[1], value4=self.size[0]))
            return im
        return _center_crop(im, self.size)

    def to_uint8(self, im: Image.Image) -> np.ndarray:
        """A PIL image (any mode, any size) to the ``C×H×W`` uint8 array the model sees before normalisation."""
        im = self.geometry(self.convert_mode(im))
        a = np.asarray(im, dtype=np.uint8)
        return np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))

    # --- the float half ---------------------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``N×C×H×W`` (or 0–1 floats) to the float32 input of the model.

        A 1-channel batch given to a 3-channel preprocessing is repeated over the channels first (what
        ``convert("RGB")`` does to a greyscale image), so greyscale data can be cached once.
        """
        import torch  # here, not at the top: the pixel half runs in torch-free decode workers

        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input back to 0–1 floats for display."""
        import torch

        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def __call__(self, im: Image.Image) -> torch.Tensor:
        """A PIL image to the normalised ``C×H×W`` float tensor (a drop-in for torchvision's transforms)."""
        import torch

        return self.normalize(torch.from_numpy(self.to_uint8(im)))[0]


def _center_crop(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """torchvision's ``F.center_crop`` on a PIL image: pad with zeros when smaller, then crop the centre."""
    ch, cw = size
    w, h = im.size
    if cw > w or ch > h:
        left, top = (cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0
        right, bottom = (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0
        padded = Image.new(im.mode, (w + left + right, h + top + bottom), 0)
        padded.paste(im, (left, top))
        im, (w, h) = padded, padded.size
        if (w, h) == (cw, ch):
            return im
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return im.crop((left, top, left + cw, top + ch))


def native(input_shape: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...],
           source: str = "dataset statistics") -> Preprocessing:
    """The preprocessing of a model trained by nnlab on a dataset at its own size (the demo CNN)."""
    c, h, w = input_shape
    return Preprocessing(size=(h, w), channels=c, resize_mode="none", resize=0, crop="center",
                         interpolation="bilinear", mean=tuple(mean), std=tuple(std), source=source)


def imagenet(size: int = 224, resize: int = 256, interpolation: str = "bilinear", source: str = "ImageNet") \
        -> Preprocessing:
    """The usual ImageNet evaluation preprocessing (shorter side 256, centre crop 224, ImageNet mean/std)."""
    return Preprocessing(size=(size, size), channels=3, resize_mode="shorter", resize=resize, crop="center",
                         interpolation=interpolation, mean=IMAGENET_MEAN, std=IMAGENET_STD, source=source)
