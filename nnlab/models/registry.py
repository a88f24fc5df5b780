"""Model architectures (one registry): the demo CNN, nnlab's legacy keys, and the torchvision and timm zoos.

Keys: nnlab's own (``"demo-cnn"``, ``"demo-cnn-small"``, and the legacy ``"resnet18"``, ``"vgg16"``,
``"mobilenet_v2"`` that stored records use), ``"tv:<name>"`` and ``"timm:<name>"`` (:mod:`nnlab.models.zoo`).
:func:`create_model` builds any of them for the data; :func:`default_preprocessing` says what input the
architecture expects. Checkpoint reading and fitting live in :mod:`nnlab.models.checkpoints` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nnlab.data.preprocess import Preprocessing, PreprocessingError, native
from nnlab.i18n import N_, _
from nnlab.models.checkpoints import (  # noqa: F401  (re-exported: the names callers import from here)
    MAX_CHECKPOINT_BYTES,
    CheckpointError,
    StateDict,
    check_state_dict,
    load_checkpoint,
    load_into,
    model_hash,
    read_state_dict,
    read_state_dict_file,
    state_dict_hash,
)
from nnlab.models.layers import adapt_conv_channels as _adapt_first_conv
from nnlab.models.randinit import seeded_init


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
            raise ValueError(_("input {h}×{w} is too small for the demo CNN (needs at least 4×4)").format(h=h, w=w))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(w2 * fh * fw, hidden), nn.ReLU(), nn.Dropout(0.25),
            nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


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

        state = None
        if pretrained:  # read weights-only from the cache or a download (nnlab.models.zoo), never unpickled
            from nnlab.models.zoo import pretrained_state

            state = pretrained_state(f"tv:{name}")
        try:
            model = getattr(torchvision.models, name)(weights=None)
        except Exception as exc:
            raise CheckpointError(_("torchvision's {name} could not be built: {error}").format(
                name=name, error=type(exc).__name__)) from exc
        if state is not None:
            load_into(model, state)
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
    """A registered architecture: ``build(in_channels, num_classes, input_size, pretrained=False)``.

    Attributes:
        preprocessing_from: A zoo key whose metadata gives the preprocessing (``"tv:resnet18"``); empty for
            an architecture trained by nnlab at the dataset's own size and statistics ("native").
    """

    key: str
    label: str
    build: Callable[..., nn.Module]
    pretrained_available: bool = False
    preprocessing_from: str = ""


ARCHITECTURES: dict[str, ArchEntry] = {}


def register_model(key: str, label: str, build: Callable[..., nn.Module], pretrained_available: bool = False,
                   preprocessing_from: str = "") -> None:
    ARCHITECTURES[key] = ArchEntry(key, label, build, pretrained_available, preprocessing_from)


def _demo(width: int, hidden: int) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, input_size: tuple[int, int], pretrained: bool = False) -> nn.Module:
        if pretrained:
            raise CheckpointError(_("the demo CNN has no pretrained weights; nnlab trains it itself"))
        return DemoCNN(in_channels, num_classes, input_size, width=width, hidden=hidden)
    return build


register_model("demo-cnn", N_("Demo CNN (nnlab)"), _demo(32, 128))
register_model("demo-cnn-small", N_("Demo CNN, narrow (student)"), _demo(8, 32))
for _name, _label in (("resnet18", "ResNet-18"), ("vgg16", "VGG-16"), ("mobilenet_v2", "MobileNetV2")):
    register_model(_name, f"{_label} (torchvision)", _torchvision(_name), True, f"tv:{_name}")


def list_models(zoos: bool = False) -> list[str]:
    """Registered architecture keys; with ``zoos`` also every ``tv:`` and ``timm:`` key (builds no model)."""
    if not zoos:
        return list(ARCHITECTURES)
    from nnlab.models.zoo import zoo_keys

    return list(ARCHITECTURES) + zoo_keys()


def is_architecture(arch: str) -> bool:
    """Whether ``arch`` names a registered or zoo architecture."""
    if arch in ARCHITECTURES:
        return True
    from nnlab.models.zoo import is_known, is_zoo_key

    return is_zoo_key(arch) and is_known(arch)


def arch_label(arch: str, translated: bool = True) -> str:
    """A label for menus ("Demo CNN (nnlab)", "resnet50 · torchvision · 25.6 M params · 224 px"), in the current
    language unless ``translated`` is False (the English label, for names stored in records)."""
    if arch in ARCHITECTURES:
        label = ARCHITECTURES[arch].label
        return _(label) if translated else label
    from nnlab.models.zoo import zoo_label

    return zoo_label(arch)


def create_model(arch: str, in_channels: int, num_classes: int, input_size: tuple[int, int],
                 pretrained: bool = False, *, seed: int | None = None) -> nn.Module:
    """Build an architecture for the given input and class count (random weights unless pretrained).

    Args:
        arch: A registered key or ``"tv:<name>"`` / ``"timm:<name>"``.
        in_channels: Input channels (a pretrained first conv is adapted).
        num_classes: Classes of the dataset (the classifier is made or resized for them).
        input_size: ``(H, W)`` of the model input.
        pretrained: Start from the architecture's pretrained weights (cache or hub; a clear
            :class:`CheckpointError` when neither is available).
        seed: Redraw random weights reproducibly (:func:`nnlab.models.randinit.seeded_init`), so the same arguments
            give the same state dict; on pretrained weights only a newly made classifier is redrawn.

    Raises:
        CheckpointError: unknown architecture, an input it cannot take, pretrained weights unavailable.
    """
    if arch in ARCHITECTURES:
        model = ARCHITECTURES[arch].build(in_channels, num_classes, tuple(input_size), pretrained=pretrained)
        fresh = None if not pretrained else (head_layers(model) if num_classes != 1000 else [])
    else:
        from nnlab.models.zoo import build, is_zoo_key

        if not is_zoo_key(arch):
            raise CheckpointError(_("unknown architecture {arch!r}; choose one of {choices} or a 'tv:<name>' / "
                                    "'timm:<name>' key").format(arch=arch, choices=', '.join(ARCHITECTURES)))
        model, fresh = build(arch, in_channels, num_classes, tuple(input_size), pretrained)
        fresh = None if not pretrained else fresh
    if seed is not None and (fresh is None or fresh):
        seeded_init(model, seed, fresh)
    return model


def head_layers(model: nn.Module) -> list[str]:
    """Names of the classifier layer(s) of a built model."""
    from nnlab.models.checkpoints import head_names

    return head_names(model)


def default_preprocessing(arch: str, *, input_shape: tuple[int, int, int] | None = None,
                          mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                          channels: int = 3) -> Preprocessing:
    """The preprocessing an architecture expects, from its own metadata.

    torchvision: ``Weights.transforms()`` of the default weights; timm: ``pretrained_cfg`` through
    ``resolve_data_config`` (both offline). nnlab's demo CNNs are "native": trained at the dataset's own size
    with its statistics, so the caller passes those (:func:`needs_native_preprocessing` says when).

    Args:
        input_shape: ``(C, H, W)`` of the dataset (native architectures only).
        mean: The dataset's per-channel mean on the 0–1 scale (native only).
        std: Its per-channel standard deviation (native only).
        channels: 1 for a greyscale model input (zoo architectures; mean and std are averaged).

    Raises:
        PreprocessingError: a native architecture without the dataset's shape and statistics.
        CheckpointError: an unknown architecture.
    """
    entry = ARCHITECTURES.get(arch)
    if entry is not None and not entry.preprocessing_from:
        if input_shape is None or mean is None or std is None:
            raise PreprocessingError(_("{label} is trained at the dataset's own size and statistics: pass "
                                       "input_shape, mean and std of the dataset").format(label=_(entry.label)))
        return native(tuple(input_shape), tuple(mean), tuple(std))
    from nnlab.models.zoo import is_zoo_key, zoo_preprocessing

    key = entry.preprocessing_from if entry is not None else arch
    if not is_zoo_key(key):
        raise CheckpointError(_("unknown architecture {arch!r}").format(arch=arch))
    return zoo_preprocessing(key, channels)


def needs_native_preprocessing(arch: str) -> bool:
    """True for architectures trained by nnlab at the dataset's own size and statistics (the demo CNNs)."""
    entry = ARCHITECTURES.get(arch)
    return entry is not None and not entry.preprocessing_from


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_shape_ok(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Run one dummy batch and raise :class:`CheckpointError` if the output is not ``(2, num_classes)``."""
    x = torch.zeros(2, *input_shape)
    try:
        with torch.inference_mode():
            out = model.eval()(x)
    except Exception as exc:
        raise CheckpointError(_("the model fails on {input_shape} inputs: {error}: {detail}").format(
            input_shape=input_shape, error=type(exc).__name__, detail=str(exc)[:200])) from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(_("the model returns {shape} for a batch of 2, the dataset needs (2, "
                                "{num_classes})").format(shape=shape, num_classes=num_classes))


def search_models(query: str = "", limit: int = 50) -> list[tuple[str, str]]:
    """Architectures matching ``query``, best first, as ``(key, label)``: nnlab's own, then the zoos'
    (:func:`nnlab.models.zoo.search_models`)."""
    from nnlab.models.zoo import search_models as search_zoos

    return search_zoos(query, limit, {k: e.label for k, e in ARCHITECTURES.items()})
