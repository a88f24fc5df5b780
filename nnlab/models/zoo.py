"""The torchvision and timm zoos: every classification architecture by key, search, builders, preprocessing.

Keys are ``"tv:<name>"`` (``torchvision.models.list_models(module=torchvision.models)``) and ``"timm:<name>"``
(``timm.list_models()``, optionally with a pretrained tag: ``"timm:vit_tiny_patch16_224.augreg_in21k"``).
Listing and search read names and metadata only: no model is instantiated.

Preprocessing comes from the architecture's own metadata, offline: torchvision's ``Weights.transforms()``
and timm's ``pretrained_cfg`` through ``timm.data.resolve_data_config``.

Pretrained weights are used from the local cache (torch hub's ``checkpoints/`` for torchvision, the
Hugging Face cache for timm) or downloaded when the host answers within :data:`HUB_TIMEOUT_S`; otherwise a
:class:`~nnlab.models.checkpoints.CheckpointError` says so at once.
"""

from __future__ import annotations

import functools
import math
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from torch import nn

from nnlab.data.preprocess import Preprocessing, PreprocessingError
from nnlab.i18n import _
from nnlab.models.checkpoints import CheckpointError, head_names, read_state_dict_file
from nnlab.models.layers import adapt_conv_channels

TV, TIMM = "tv", "timm"
HUB_TIMEOUT_S = 3.0
_TWO_STAGE = ("googlenet", "inception_v3")  # torchvision nets with auxiliary heads and input transforms


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of a zoo (metadata only)."""

    key: str
    source: str  # "tv" or "timm"
    name: str
    label: str


def split_key(key: str) -> tuple[str, str]:
    """``"tv:resnet18"`` → ``("tv", "resnet18")``; raises :class:`CheckpointError` for other keys."""
    source, sep, name = key.partition(":")
    if not sep or source not in (TV, TIMM) or not name:
        raise CheckpointError(_("{key!r} is not a zoo key (expected 'tv:<name>' or 'timm:<name>')").format(key=key))
    return source, name


def is_zoo_key(key: str) -> bool:
    return key.startswith((TV + ":", TIMM + ":"))


# --- listing and search --------------------------------------------------------------------------------

def _tv_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def _tv_label(name: str) -> str:
    import torchvision

    try:
        w = torchvision.models.get_model_weights(name).DEFAULT
        crop = w.transforms().crop_size[0]
        return f"{name} · torchvision · {w.meta['num_params'] / 1e6:.1f} M params · {crop} px"
    except Exception:
        return f"{name} · torchvision"


def _timm_label(name: str) -> str:
    cfg = _timm_cfg(name)
    return f"{name} · timm · {cfg.get('input_size', (3, 224, 224))[-1]} px" if cfg else f"{name} · timm"


@functools.cache
def zoo_entries() -> tuple[ZooEntry, ...]:
    """Every torchvision and timm classification architecture (cached; builds no model)."""
    out = [ZooEntry(f"{TV}:{n}", TV, n, _tv_label(n)) for n in _tv_names()]
    out += [ZooEntry(f"{TIMM}:{n}", TIMM, n, _timm_label(n)) for n in _timm_names()]
    return tuple(out)


@functools.cache
def _by_key() -> dict[str, ZooEntry]:
    return {e.key: e for e in zoo_entries()}


def zoo_keys(source: str | None = None) -> list[str]:
    """Keys of one zoo ("tv" or "timm") or of both."""
    return [e.key for e in zoo_entries() if source is None or e.source == source]


def is_known(key: str) -> bool:
    """True for a listed zoo key, or a timm key with a pretrained tag of a listed architecture."""
    if key in _by_key():
        return True
    base, dot, _ = key.partition(".")
    return bool(dot) and base.startswith(TIMM + ":") and base in _by_key() and _timm_cfg(key[5:]) is not None


def zoo_label(key: str) -> str:
    e = _by_key().get(key)
    return e.label if e else key


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _rank(name: str, tokens: list[str], joined: str) -> tuple | None:
    n = _norm(name)
    if not all(t in n for t in tokens):
        return None
    exact = 0 if n == joined else 1 if n.startswith(joined) else 2 if n.startswith(tokens[0]) else 3
    return exact, n.find(tokens[0]), len(n), name


def search_models(query: str = "", limit: int = 50, registered: dict[str, str] | None = None) \
        -> list[tuple[str, str]]:
    """Architectures matching ``query``, best first, as ``(key, label)``.

    Matching ignores case, spaces, ``-`` and ``_`` ("ResNet-18" finds ``resnet18``); every word of the query
    must occur in the name. ``tv:``/``timm:`` at the start of the query restricts the search to one zoo.
    Exact names come first, then names that start with the query, then earlier and shorter matches; on a
    tie nnlab's own architectures (``registered``, given by :func:`nnlab.models.registry.search_models`, matched on
    key and label) come before torchvision, then timm. An empty query lists them in that order.
    """
    registered = registered or {}
    q = query.strip()
    only = None
    for s in (TV, TIMM):
        if q.lower().startswith(s + ":"):
            only, q = s, q[len(s) + 1:]
    tokens = [t for t in (_norm(w) for w in q.split()) if t]
    joined = "".join(tokens)
    rows: list[tuple[tuple, str, str]] = []
    if only is None:
        for i, (k, label) in enumerate(registered.items()):
            if not tokens:
                rows.append(((-1, i), k, label))
                continue
            r = _rank(k, tokens, joined) or _rank(label, tokens, joined)
            if r is not None:
                rows.append(((r[0], -1) + r[1:], k, label))
    for i, e in enumerate(zoo_entries()):
        if only is not None and e.source != only:
            continue
        order = 0 if e.source == TV else 1
        if not tokens:
            rows.append(((order, i), e.key, e.label))
            continue
        r = _rank(e.name, tokens, joined)
        if r is not None:
            rows.append(((r[0], order) + r[1:], e.key, e.label))
    rows.sort(key=lambda row: row[0])
    return [(k, label) for _, k, label in rows[:max(0, int(limit))]]


# --- metadata ------------------------------------------------------------------------------------------

def _timm_cfg(name: str) -> dict | None:
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except Exception:
        return None
    return cfg.to_dict() if cfg is not None else None


def _tv_weights(name: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except Exception as exc:
        raise CheckpointError(_("torchvision has no classification architecture {name!r}").format(name=name)) from exc


def _grey(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    return (sum(values) / len(values),) if channels == 1 else tuple(values)


def zoo_preprocessing(key: str, channels: int = 3) -> Preprocessing:
    """The evaluation preprocessing of a zoo architecture from its own metadata (offline)."""
    if channels not in (1, 3):
        raise PreprocessingError(_("channels must be 1 or 3, got {channels}").format(channels=channels))
    source, name = split_key(key)
    if source == TV:
        w = _tv_weights(name)
        t = w.transforms()
        crop, resize = list(t.crop_size), list(t.resize_size)
        return Preprocessing(size=(crop[0], crop[-1]), channels=channels,
                             resize_mode="shorter" if len(resize) == 1 else "squash", resize=resize[0],
                             crop="center", interpolation=t.interpolation.value,
                             mean=_grey(tuple(t.mean), channels), std=_grey(tuple(t.std), channels),
                             source=f"torchvision {type(w).__name__}.{w.name}")
    from timm.data import resolve_data_config

    cfg = _timm_cfg(name)
    if cfg is None:
        raise CheckpointError(_("timm has no architecture {name!r}").format(name=name))
    dc = resolve_data_config(pretrained_cfg=cfg)
    _c, h, w = dc["input_size"]
    crop_pct, mode = float(dc["crop_pct"]), dc["crop_mode"]
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    label = f"timm {name}" + (f".{cfg['tag']}" if cfg.get("tag") and "." not in name else "")
    exact = h == w and mode in ("center", "squash")
    if not exact:  # timm's "border" mode and non-square inputs have no exact Preprocessing equivalent
        label += f" (crop mode {mode!r} on {h}×{w} approximated by shorter side + centre crop)"
    return Preprocessing(size=(h, w), channels=channels, resize_mode="squash" if mode == "squash" and exact
                         else "shorter", resize=min(scale), crop="center", interpolation=dc["interpolation"],
                         mean=_grey(tuple(dc["mean"]), channels), std=_grey(tuple(dc["std"]), channels),
                         source=label)


def zoo_input_size(key: str) -> tuple[int, int]:
    """The ``(H, W)`` the architecture's metadata names as its input size."""
    return zoo_preprocessing(key).size


# --- pretrained weights ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PretrainedSource:
    """Where pretrained weights of one architecture come from.

    Attributes:
        cached: The local file (torch hub's ``checkpoints/`` or the Hugging Face cache) when already here.
        host: The server a download needs.
        description: For messages ("torchvision ResNet18_Weights.IMAGENET1K_V1", "timm timm/resnet18.a1_in1k").
        num_classes: Classes of the pretrained classifier.
        url: Download address (torchvision and timm's non-hub weights).
        hf_repo: Hugging Face repository and file (timm).
    """

    cached: Path | None
    host: str
    description: str
    num_classes: int
    url: str = ""
    hf_repo: tuple[str, str] | None = None


def _reachable(host: str, timeout: float = HUB_TIMEOUT_S, port: int = 443) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds (DNS included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _hub_file(url: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def pretrained_source(key: str) -> PretrainedSource:
    """Where ``key``'s pretrained weights would come from (nothing is downloaded)."""
    source, name = split_key(key)
    if source == TV:
        w = _tv_weights(name)
        f = _hub_file(w.url)
        return PretrainedSource(f if f.is_file() else None, urlparse(w.url).netloc,
                                f"torchvision {type(w).__name__}.{w.name}", len(w.meta.get("categories", [])),
                                url=w.url)
    cfg = _timm_cfg(name)
    if cfg is None:
        raise CheckpointError(_("timm has no architecture {name!r}").format(name=name))
    n = int(cfg.get("num_classes") or 0)
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants, try_to_load_from_cache

        repo = cfg["hf_hub_id"]
        files = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        host = urlparse(constants.ENDPOINT).netloc
        for f in files:
            p = try_to_load_from_cache(repo, f)
            if isinstance(p, str) and Path(p).is_file():
                return PretrainedSource(Path(p), host, f"timm {repo}", n, hf_repo=(repo, f))
        return PretrainedSource(None, host, f"timm {repo}", n, hf_repo=(repo, files[0]))
    if cfg.get("url"):
        f = _hub_file(cfg["url"])
        return PretrainedSource(f if f.is_file() else None, urlparse(cfg["url"]).netloc, f"timm {name}", n,
                                url=cfg["url"])
    raise CheckpointError(_("timm:{name} has no pretrained weights; use random weights or give a weights file").format(
        name=name))


def has_pretrained(key: str) -> bool:
    """Whether the architecture publishes pretrained weights (metadata only: says nothing of the network)."""
    source, name = split_key(key)
    if source == TV:
        return True
    cfg = _timm_cfg(name) or {}
    return bool(cfg.get("hf_hub_id") or cfg.get("url"))


def require_pretrained(key: str, timeout: float = HUB_TIMEOUT_S) -> PretrainedSource:
    """The pretrained source of ``key`` if its weights are cached or their host answers, else a clear error."""
    src = pretrained_source(key)
    if src.cached is None and not _reachable(src.host, timeout):
        raise CheckpointError(_("pretrained weights for {key} ({description}) could not be fetched: they are not in "
                                "the local cache and {host} cannot be reached within {timeout:g} s (offline?). Give "
                                "a weights file instead (a state dict as .pt/.pth/.bin or .safetensors) or start "
                                "from random weights.").format(
            key=key, description=src.description, host=src.host, timeout=timeout))
    return src


def _download(url: str, dest: Path, timeout: float = 30.0) -> Path:
    """Stream ``url`` into ``dest`` (atomically: a temporary file renamed at the end)."""
    import shutil
    import urllib.request

    from nnlab.workspace import atomic_path

    with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)
    return dest


def pretrained_state(key: str) -> dict:
    """The pretrained state dict of ``key``: from the cache, else downloaded into it, read weights-only.

    torchvision's and timm's own loaders are not used: they may unpickle arbitrary objects from the cache.

    Raises:
        CheckpointError: offline with nothing cached, a failed download, an unreadable file.
    """
    src = require_pretrained(key)
    path = src.cached
    if path is None:
        try:
            if src.hf_repo is not None:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(*src.hf_repo))
            else:
                path = _download(src.url, _hub_file(src.url))
        except Exception as exc:
            raise CheckpointError(_("pretrained weights for {key} could not be fetched from {host}: {error}: "
                                    "{detail}").format(key=key, host=src.host, error=type(exc).__name__,
                                                       detail=str(exc)[:160])) from exc
    return read_state_dict_file(path)


# --- builders -----------------------------------------------------------------------------------------

def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def adapt_first_conv(model: nn.Module, in_channels: int, name: str | None = None) -> str | None:
    """Give the first RGB ``nn.Conv2d`` of ``model`` (in place) ``in_channels`` inputs; RGB filters averaged."""
    if name is None:
        name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if name is None or in_channels == 3:
        return name
    conv = model.get_submodule(name)
    new = adapt_conv_channels(conv, in_channels)
    new.stride, new.padding, new.dilation = conv.stride, conv.padding, conv.dilation
    _set_module(model, name, new)
    return name


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Replace the classifier (the last ``nn.Linear`` or 1×1 ``nn.Conv2d``) by a new one with ``num_classes``."""
    names = head_names(model)
    if not names:
        raise CheckpointError(_("no classifier layer (Linear or 1×1 Conv2d) found to resize"))
    name = names[0]
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
    _set_module(model, name, new)
    return name


def _no_inplace(model: nn.Module) -> nn.Module:
    for m in model.modules():  # in-place activations break backward hooks (attributions) and captured outputs
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    return model


def _build_tv(name: str, in_channels: int, num_classes: int, input_size: tuple[int, int],
              pretrained: bool) -> tuple[nn.Module, list[str]]:
    import torchvision

    w = _tv_weights(name)
    h, wd = input_size
    mh, mw = w.meta.get("min_size", (1, 1))
    if h < mh or wd < mw:
        raise CheckpointError(_("tv:{name} needs inputs of at least {mh}×{mw} pixels; this input is {h}×{wd}. Choose "
                                "a larger input size in the preprocessing.").format(
            name=name, mh=mh, mw=mw, h=h, wd=wd))
    classes = len(w.meta.get("categories", [])) if pretrained else num_classes
    kwargs: dict = {"num_classes": classes}
    if name in _TWO_STAGE:  # no auxiliary heads (as torchvision's pretrained models); input transform as trained
        kwargs.update(aux_logits=False, transform_input=in_channels == 3)
    if name.startswith("vit_"):  # fixed-size position embeddings: pretrained ones are for their own size
        if h != wd:
            raise CheckpointError(_("tv:{name} needs a square input, got {h}×{wd}").format(name=name, h=h, wd=wd))
        kwargs["image_size"] = mh if pretrained else h
    if name.startswith("maxvit"):
        kwargs["input_size"] = (h, wd)
    state = pretrained_state(f"{TV}:{name}") if pretrained else None
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except Exception as exc:
        raise CheckpointError(_("tv:{name} cannot be built for {h}×{wd} inputs: {error}: {detail}").format(
            name=name, h=h, wd=wd, error=type(exc).__name__, detail=str(exc)[:200])) from exc
    fresh: list[str] = []
    if state is not None:
        from nnlab.models.checkpoints import load_into

        if name in _TWO_STAGE:  # the files carry the auxiliary heads torchvision drops after loading
            state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2.", "AuxLogits."))}
        load_into(model, state)
        if num_classes != classes:
            fresh.append(replace_head(model, num_classes))
    if in_channels != 3:
        adapt_first_conv(model, in_channels)
    return _no_inplace(model), fresh


def _build_timm(name: str, in_channels: int, num_classes: int, input_size: tuple[int, int],
                pretrained: bool) -> tuple[nn.Module, list[str]]:
    import timm

    cfg = _timm_cfg(name)
    if cfg is None:
        raise CheckpointError(_("timm has no architecture {name!r}").format(name=name))
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_channels}
    if pretrained:  # the file is read here (weights only); timm maps it, resets the head and adapts the stem
        kwargs["pretrained_cfg_overlay"] = {"state_dict": pretrained_state(f"{TIMM}:{name}"), "custom_load": False}
    default = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    try:
        if tuple(input_size) != default:
            try:  # fixed-size models (ViTs …) are built for the input; others reject img_size at once
                model = timm.create_model(name, pretrained=pretrained, img_size=tuple(input_size), **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
                model = timm.create_model(name, pretrained=pretrained, **kwargs)
        else:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except CheckpointError:
        raise
    except Exception as exc:
        what = "with its pretrained weights" if pretrained else f"for {input_size[0]}×{input_size[1]} inputs"
        raise CheckpointError(_("timm:{name} cannot be built {what}: {error}: {detail}").format(
            name=name, what=what, error=type(exc).__name__, detail=str(exc)[:200])) from exc
    fresh = head_names(model) if pretrained and num_classes != int(cfg.get("num_classes") or 0) else []
    return _no_inplace(model), fresh


def build(key: str, in_channels: int, num_classes: int, input_size: tuple[int, int],
          pretrained: bool = False) -> tuple[nn.Module, list[str]]:
    """Build a zoo architecture for the data; returns the model and the names of freshly made head layers.

    torchvision: random weights are built with ``num_classes``; pretrained ones are loaded (weights only)
    into the architecture and its classifier (last Linear or 1×1 conv) is replaced when the class count
    differs. timm: ``num_classes`` and ``in_chans`` are passed
    to ``timm.create_model`` (which resets the classifier and adapts the stem of pretrained weights). A
    first conv for other than 3 channels is adapted like nnlab's legacy architectures (RGB filters averaged).

    Raises:
        CheckpointError: unknown key, an input the architecture cannot take, pretrained weights offline.
    """
    source, name = split_key(key)
    if source == TV:
        return _build_tv(name, in_channels, num_classes, tuple(input_size), pretrained)
    return _build_timm(name, in_channels, num_classes, tuple(input_size), pretrained)
