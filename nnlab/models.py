"""Model architectures (one registry), the demo CNN, and safe checkpoint loading.

Checkpoints are read with ``torch.load(..., weights_only=True)`` or safetensors: nothing a user gives
is unpickled as code.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]
MAX_CHECKPOINT_BYTES = 2 * 1024**3


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message meant for the user."""


class DemoCNN(nn.Module):
    """The demo network: conv–BN–ReLU blocks with max pooling and a small classifier.

    ReLUs are ``nn.ReLU`` modules (not in-place, not functional) so attribution hooks see them.

    Args:
        in_channels: Input channels.
        num_classes: Output classes.
        input_size: ``(H, W)`` of the input.
        width: Channels of the first block; later blocks use 2× that.
        hidden: Units of the hidden fully connected layer.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: tuple[int, int] = (28, 28),
                 width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        w1, w2 = width, 2 * width
        h, w = input_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w2, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(),
        )
        fh, fw = h // 4, w // 4
        if fh < 1 or fw < 1:
            raise ValueError(f"input {h}×{w} is too small for the demo CNN (needs at least 4×4)")
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(w2 * fh * fw, hidden), nn.ReLU(), nn.Dropout(0.25),
            nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():  # keep pretrained filters meaningful: average over the RGB channels
        new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class Upsize(nn.Module):
    """Resize the input to at least ``min_size`` so deep torchvision nets accept small images."""

    def __init__(self, min_size: int) -> None:
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) >= self.min_size:
            return x
        return nn.functional.interpolate(x, size=(max(h, self.min_size), max(w, self.min_size)),
                                         mode="bilinear", align_corners=False)


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, input_size: tuple[int, int], pretrained: bool = False) -> nn.Module:
        import torchvision

        weights = "DEFAULT" if pretrained else None
        try:
            model = getattr(torchvision.models, name)(weights=weights)
        except Exception as exc:
            raise CheckpointError(f"torchvision's pretrained weights for {name} could not be fetched "
                                  f"(offline?): {type(exc).__name__}. Give a weights file instead.") from exc
        if name.startswith("resnet"):
            model.conv1 = _adapt_first_conv(model.conv1, in_channels)
            if model.fc.out_features != num_classes:
                model.fc = nn.Linear(model.fc.in_features, num_classes)
        elif name.startswith("vgg"):
            model.features[0] = _adapt_first_conv(model.features[0], in_channels)
            if model.classifier[-1].out_features != num_classes:
                model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
        elif name.startswith("mobilenet"):
            model.features[0][0] = _adapt_first_conv(model.features[0][0], in_channels)
            if model.classifier[-1].out_features != num_classes:
                model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
        for m in model.modules():  # in-place activations break backward hooks (attributions)
            if hasattr(m, "inplace"):
                m.inplace = False
        if min(input_size) < 32:
            return nn.Sequential(Upsize(32), model) if name.startswith("vgg") else model
        return model

    return build


@dataclass(frozen=True)
class ArchEntry:
    """A registered architecture: ``build(in_channels, num_classes, input_size, pretrained=False)``."""

    key: str
    label: str
    build: Callable[..., nn.Module]
    pretrained_available: bool = False


ARCHITECTURES: dict[str, ArchEntry] = {}


def register_model(key: str, label: str, build: Callable[..., nn.Module], pretrained_available: bool = False) -> None:
    ARCHITECTURES[key] = ArchEntry(key, label, build, pretrained_available)


def _demo(width: int, hidden: int) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, input_size: tuple[int, int], pretrained: bool = False) -> nn.Module:
        if pretrained:
            raise CheckpointError("the demo CNN has no pretrained weights; nnlab trains it itself")
        return DemoCNN(in_channels, num_classes, input_size, width=width, hidden=hidden)
    return build


register_model("demo-cnn", "Demo CNN (nnlab)", _demo(32, 128))
register_model("demo-cnn-small", "Demo CNN, narrow (student)", _demo(8, 32))
register_model("resnet18", "ResNet-18 (torchvision)", _torchvision("resnet18"), True)
register_model("vgg16", "VGG-16 (torchvision)", _torchvision("vgg16"), True)
register_model("mobilenet_v2", "MobileNetV2 (torchvision)", _torchvision("mobilenet_v2"), True)


def list_models() -> list[str]:
    return list(ARCHITECTURES)


def create_model(arch: str, in_channels: int, num_classes: int, input_size: tuple[int, int],
                 pretrained: bool = False) -> nn.Module:
    """Build a registered architecture for the given input and class count (random weights unless pretrained)."""
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch].build(in_channels, num_classes, tuple(input_size), pretrained=pretrained)


# --- checkpoints ------------------------------------------------------------------------------------------

def _unwrap(obj: object) -> StateDict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("the file holds no state dict (a mapping of parameter names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"the file is not a plain state dict: entry {bad[0]!r} is not a tensor")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(data: bytes, filename: str = "checkpoint.pt") -> StateDict:
    """Parse checkpoint bytes (``.pt``/``.pth`` via weights-only unpickling, or ``.safetensors``).

    Raises:
        CheckpointError: empty, truncated, foreign or code-carrying files, with a message for the user.
    """
    if not data:
        raise CheckpointError("the file is empty")
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"the file is larger than {MAX_CHECKPOINT_BYTES // 2**30} GiB")
    if filename.lower().endswith(".safetensors"):
        from safetensors.torch import load as st_load

        try:
            return _unwrap(st_load(data))
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"not a valid safetensors file ({type(exc).__name__}: {str(exc)[:160]})") from exc
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc)
        if "GLOBAL" in msg or "Unsupported global" in msg:
            raise CheckpointError("refused: the file holds pickled Python objects (a whole model or code), not "
                                  "just tensors; nnlab never runs code from a file. Save `model.state_dict()` "
                                  "instead.") from exc
        if data[:2] == b"PK" or "zip archive" in msg:
            raise CheckpointError("the file is truncated or damaged (its zip archive cannot be read)") from exc
        raise CheckpointError("not a readable PyTorch checkpoint (neither a torch.save archive of tensors nor "
                              f"safetensors; {type(exc).__name__})") from exc
    return _unwrap(obj)


def read_state_dict_file(path: str | Path) -> StateDict:
    p = Path(path)
    if p.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{p.name} is larger than {MAX_CHECKPOINT_BYTES // 2**30} GiB")
    return read_state_dict(p.read_bytes(), p.name)


def check_state_dict(model: nn.Module, state: StateDict) -> None:
    """Raise :class:`CheckpointError` naming the first tensor that does not fit ``model``."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise CheckpointError(f"the checkpoint does not fit this architecture: tensor {name!r} "
                                  f"(shape {tuple(tensor.shape)}) is missing")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"the checkpoint does not fit this architecture: tensor {name!r} has shape "
                                  f"{tuple(state[name].shape)}, the model expects {tuple(tensor.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"the checkpoint does not fit this architecture: unexpected tensor {extra[0]!r}")
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"tensor {name!r} holds NaN or Inf values")


def load_into(model: nn.Module, state: StateDict) -> nn.Module:
    """Check ``state`` against ``model`` and load it; returns the model in eval mode."""
    check_state_dict(model, state)
    model.load_state_dict(state)
    return model.eval()


def state_dict_hash(state: StateDict) -> str:
    """A stable content hash of a state dict (names, shapes, dtypes, bytes)."""
    h = hashlib.sha1()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_hash(model: nn.Module) -> str:
    """Content hash of a model's parameters and buffers (used to prove a model was not mutated)."""
    return state_dict_hash(model.state_dict())


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_shape_ok(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Run one dummy batch and raise :class:`CheckpointError` if the output is not ``(2, num_classes)``."""
    x = torch.zeros(2, *input_shape)
    try:
        with torch.inference_mode():
            out = model.eval()(x)
    except Exception as exc:
        raise CheckpointError(f"the model fails on {input_shape} inputs: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"the model returns {shape} for a batch of 2, the dataset needs (2, {num_classes})")
