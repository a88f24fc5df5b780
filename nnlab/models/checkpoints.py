"""Safe checkpoint reading and fitting a state dict to a model.

Files are read with ``torch.load(..., weights_only=True)`` or safetensors: nothing a user gives is unpickled
as code. A state dict is found inside the usual wrappers (``state_dict``, ``model``, ``model_state_dict``,
``state_dict_ema`` …), and fitted to the model's own key layout: ``module.`` (DataParallel/DDP),
``_orig_mod.`` (``torch.compile``) and ``model.`` (Lightning and other wrappers) prefixes are removed, and
a timm model's own ``checkpoint_filter_fn`` converts the original authors' layouts (e.g. ConvNeXt's or
ViT's) to timm's. A classifier with another class count is reported by name, or dropped on request.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnlab.i18n import _

StateDict = dict[str, torch.Tensor]
MAX_CHECKPOINT_BYTES = 2 * 1024**3
WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "module")
EMA_WRAPPERS = ("state_dict_ema", "model_ema", "ema")
PREFIXES = ("module.", "_orig_mod.", "model.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message meant for the user."""


# --- reading ----------------------------------------------------------------------------------------------

def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: object, prefer_ema: bool = False) -> StateDict:
    if isinstance(obj, dict) and not _is_state_dict(obj):
        order = EMA_WRAPPERS + WRAPPERS if prefer_ema else WRAPPERS + EMA_WRAPPERS
        for key in order:
            if key in obj and isinstance(obj[key], dict) and obj[key]:
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(_("the file holds no state dict (a mapping of parameter names to tensors)"))
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(_("the file is not a plain state dict: entry {value!r} is not a tensor").format(
            value=bad[0]))
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    return strip_common_prefix(state, ("_orig_mod.",))


def strip_common_prefix(state: StateDict, prefixes: tuple[str, ...] = PREFIXES) -> StateDict:
    """Remove any of ``prefixes`` shared by every key (repeatedly, e.g. ``module.model.``)."""
    changed = True
    while changed and state:
        changed = False
        for p in prefixes:
            if all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
    return state


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def read_state_dict(data: bytes, filename: str = "checkpoint.pt", prefer_ema: bool = False) -> StateDict:
    """Parse checkpoint bytes (``.pt``/``.pth``/``.bin`` via weights-only unpickling, or safetensors).

    Args:
        data: The file's bytes.
        filename: Its name (``.safetensors`` is read as safetensors; other names are sniffed).
        prefer_ema: Take ``state_dict_ema`` over ``state_dict`` when a training checkpoint holds both.

    Raises:
        CheckpointError: empty, truncated, foreign or code-carrying files, with a message for the user.
    """
    if not data:
        raise CheckpointError(_("the file is empty"))
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(_("the file is larger than {value} GiB").format(value=MAX_CHECKPOINT_BYTES // 2**30))
    if filename.lower().endswith(".safetensors") or _looks_like_safetensors(data):
        from safetensors.torch import load as st_load

        try:
            return _unwrap(st_load(data), prefer_ema)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(_("not a valid safetensors file ({error}: {detail})").format(
                error=type(exc).__name__, detail=str(exc)[:160])) from exc
    try:
        # timm's training checkpoints carry their argparse Namespace: a plain bag of values, allowed.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc)
        if "GLOBAL" in msg or "Unsupported global" in msg:
            raise CheckpointError(_("refused: the file holds pickled Python objects (a whole model or code), not "
                                  "just tensors; nnlab never runs code from a file. Save `model.state_dict()` "
                                  "instead.")) from exc
        if data[:2] == b"PK" or "zip archive" in msg:
            raise CheckpointError(_("the file is truncated or damaged (its zip archive cannot be read)")) from exc
        raise CheckpointError(_("not a readable PyTorch checkpoint (neither a torch.save archive of tensors nor "
                                "safetensors; {error})").format(error=type(exc).__name__)) from exc
    return _unwrap(obj, prefer_ema)


def read_state_dict_file(path: str | Path, prefer_ema: bool = False) -> StateDict:
    """:func:`read_state_dict` of a file on disk (size checked before reading)."""
    p = Path(path)
    if p.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(_("{name} is larger than {value} GiB").format(
            name=p.name, value=MAX_CHECKPOINT_BYTES // 2**30))
    return read_state_dict(p.read_bytes(), p.name, prefer_ema)


# --- fitting to a model -------------------------------------------------------------------------------------

def head_names(model: nn.Module) -> list[str]:
    """Module names of the classifier layer(s) (timm's ``pretrained_cfg["classifier"]``, else the last
    ``nn.Linear`` or 1×1 ``nn.Conv2d`` in module order)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("classifier"):
        names = cfg["classifier"]
        names = [names] if isinstance(names, str) else list(names)
        mods = dict(model.named_modules())
        found = [n for n in names if isinstance(mods.get(n), (nn.Linear, nn.Conv2d))]
        if found:
            return found
    last = ""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)):
            last = name
    return [last] if last else []


def _mismatch(expected: StateDict, state: StateDict) -> str | None:
    """The first problem with ``state`` against ``expected`` as a message, or None when it fits."""
    for name, tensor in expected.items():
        if name not in state:
            return _("tensor {name!r} (shape {shape}) is missing").format(name=name, shape=tuple(tensor.shape))
        if tuple(state[name].shape) != tuple(tensor.shape):
            return _("tensor {name!r} has shape {shape}, the model expects {expected}").format(
                name=name, shape=tuple(state[name].shape), expected=tuple(tensor.shape))
    extra = [k for k in state if k not in expected]
    if extra:
        return _("unexpected tensor {name!r}").format(name=extra[0])
    return None


def _timm_filter(model: nn.Module, state: StateDict) -> StateDict | None:
    """The timm model's own ``checkpoint_filter_fn`` (original-author layouts → timm's), if it has one."""
    if not type(model).__module__.startswith("timm."):
        return None
    fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return None
    try:
        out = fn(dict(state), model)
    except Exception:
        return None
    return out if _is_state_dict(out) else None


def _candidates(model: nn.Module, state: StateDict) -> list[tuple[str, StateDict]]:
    out = [("", state)]
    stripped = strip_common_prefix(state)
    if stripped.keys() != state.keys():
        out.append(("removed a common key prefix", stripped))
    for note, st in list(out):
        filtered = _timm_filter(model, st)
        if filtered is not None and (filtered.keys() != st.keys()
                                     or any(filtered[k].shape != st[k].shape for k in st)):
            out.append(((note + "; " if note else "") + "converted with timm's checkpoint_filter_fn", filtered))
    return out


@dataclass
class FitReport:
    """What :func:`fit_state_dict` did to make a checkpoint fit."""

    state: StateDict
    notes: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)


def _head_problem(model: nn.Module, expected: StateDict, state: StateDict) -> tuple[list[str], str] | None:
    """If only classifier tensors differ in shape: (their keys, a message naming the class counts)."""
    heads = head_names(model)
    keys = [f"{h}.{p}" for h in heads for p in ("weight", "bias") if f"{h}.{p}" in expected]
    if not keys or any(k not in state for k in keys):
        return None
    bad = [k for k in keys if tuple(state[k].shape) != tuple(expected[k].shape)]
    if not bad:
        return None
    rest_e = {k: v for k, v in expected.items() if k not in keys}
    rest_s = {k: v for k, v in state.items() if k not in keys}
    if _mismatch(rest_e, rest_s) is not None:
        return None
    k = bad[0]
    msg = _("the checkpoint does not fit this architecture: tensor {name!r} has shape {shape}, the model expects "
            "{expected}: the checkpoint's classifier ({head}) has {classes} classes, the dataset has {dataset}. "
            "Choose to resize the head to keep every other layer and train a new classifier.").format(
        name=k, shape=tuple(state[k].shape), expected=tuple(expected[k].shape), head=heads[0],
        classes=state[k].shape[0], dataset=expected[k].shape[0])
    return keys, msg


def fit_state_dict(model: nn.Module, state: StateDict, resize_head: bool = False) -> FitReport:
    """Make ``state`` fit ``model``'s key layout, or raise a :class:`CheckpointError` naming the first misfit.

    Tries the keys as they are, without a common ``module.``/``model.``/``_orig_mod.`` prefix, and through
    a timm model's ``checkpoint_filter_fn``.

    Args:
        resize_head: When only the classifier's shape differs (another class count), drop the checkpoint's
            classifier and keep the model's own (freshly initialised) one instead of refusing.
    """
    expected = model.state_dict()
    first_error = None
    for note, cand in _candidates(model, state):
        problem = _mismatch(expected, cand)
        if problem is None:
            return FitReport(cand, [note] if note else [])
        head = _head_problem(model, expected, cand)
        if head is not None:
            keys, msg = head
            if not resize_head:
                raise CheckpointError(msg)
            kept = {k: v for k, v in cand.items() if k not in keys}
            kept.update({k: expected[k] for k in keys})
            notes = ([note] if note else []) + [_("classifier {layers} dropped from the checkpoint and initialised "
                                                  "anew").format(layers=", ".join(sorted({k.rsplit(".", 1)[0]
                                                                                          for k in keys})))]
            return FitReport(kept, notes, keys)
        if first_error is None:
            first_error = problem
    overlap = len(set(state) & set(expected))
    hint = "" if overlap else _(" (none of the checkpoint's tensor names match this architecture: was it saved "
                                "from another architecture or library?)")
    raise CheckpointError(_("the checkpoint does not fit this architecture: {first_error}{hint}").format(
        first_error=first_error, hint=hint))


def check_state_dict(model: nn.Module, state: StateDict) -> None:
    """Raise :class:`CheckpointError` naming the first tensor that does not fit ``model`` (exact keys)."""
    problem = _mismatch(model.state_dict(), state)
    if problem is not None:
        raise CheckpointError(_("the checkpoint does not fit this architecture: {problem}").format(problem=problem))
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(_("tensor {name!r} holds NaN or Inf values").format(name=name))


def load_checkpoint(model: nn.Module, state: StateDict, resize_head: bool = False) -> tuple[nn.Module, list[str]]:
    """Fit ``state`` to ``model`` (:func:`fit_state_dict`), check it and load it.

    Returns:
        The model in eval mode and notes for the user on what was adapted.
    """
    report = fit_state_dict(model, state, resize_head)
    check_state_dict(model, report.state)
    model.load_state_dict(report.state)
    return model.eval(), report.notes


def load_into(model: nn.Module, state: StateDict, resize_head: bool = False) -> nn.Module:
    """Check ``state`` against ``model`` and load it; returns the model in eval mode."""
    return load_checkpoint(model, state, resize_head)[0]


# --- identity -----------------------------------------------------------------------------------------------

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
