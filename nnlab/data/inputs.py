"""One image as the model sees it: a dataset sample or an upload, through the model's own preprocessing."""

from __future__ import annotations

import torch

from nnlab.data.images import load_image_bytes, prepare_image
from nnlab.data.sets import ImageDataset


def input_from_upload(blob: bytes, data: ImageDataset, invert: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """An uploaded image as the model sees it: ``(uint8 1×C×H×W, normalised float 1×C×H×W)``.

    Through the model's own preprocessing (mode conversion, resize, crop, mean/std: what every page feeds it).
    A model seen at the dataset's native size (the demo CNN) has no resize step of its own: the upload, of any
    mode and size, is converted to its channels and squashed to its size.

    Raises:
        nnlab.data.images.ImageError: unreadable, empty, oversized images, with a message for the user.
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
