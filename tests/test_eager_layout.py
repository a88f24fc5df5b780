"""The streamed pass's eager first sample runs a convolutional network in channels-last layout on a copy (issue 22:
the first number in seconds for ResNet-50 at 224): the same logits, the model itself untouched."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models import resnet18

from nnlab.data.sets import ImageDataset
from nnlab.evaluate import _channels_last, streamed_pass
from nnlab.runtimes.base import torch_logits


def _data(side: int, n: int = 40, classes: int = 4) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return ImageDataset(id=f"rgb{side}", name="rgb", source="synthetic", classes=[str(c) for c in range(classes)],
                        x_train=x[:8], y_train=y[:8], x_test=x, y_test=y)


def test_first_sample_in_channels_last_gives_the_same_logits_and_leaves_the_model_alone(monkeypatch):
    import nnlab.evaluate as ev

    copies = []
    real = ev._channels_last
    monkeypatch.setattr(ev, "_channels_last", lambda m, shape: copies.append(shape) or real(m, shape))
    torch.manual_seed(0)
    model = resnet18(num_classes=4).eval()
    data = _data(64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy_, layout = _channels_last(model, tuple(data.input_shape))
    assert layout is torch.channels_last and copy_ is not model
    assert copy_.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    logits, info = streamed_pass(model, data, "test", first=20, precision="fp32", batch_size=16)
    x = torch.cat([xb for xb, _ in data.stream("test", 64)])
    ref = torch_logits(model, x)
    assert np.abs(logits - ref).max() < 1e-3 * max(1.0, float(np.abs(ref).max()))
    assert (logits.argmax(1) == ref.argmax(1)).all() and info["first_images"] == 20
    assert len(copies) == 1  # the first sample and the eager rest share one copy
    for k, v in model.state_dict().items():  # the model another session may hold: same values, same layout
        assert torch.equal(v, before[k]) and v.is_contiguous(), k


def test_small_images_and_models_without_convolutions_run_as_they_are():
    model = resnet18(num_classes=4).eval()
    assert _channels_last(model, (3, 32, 32)) == (model, torch.contiguous_format)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 4))
    assert _channels_last(mlp, (3, 64, 64)) == (mlp, torch.contiguous_format)
