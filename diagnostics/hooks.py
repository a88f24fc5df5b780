"""Borrowed hooks: every hook lives inside a context manager and is removed on the way out, also on errors.

A model is never left with a hook that fires in someone else's forward pass. :func:`borrowed` is a
second safety net around code we do not control (Captum): whatever hooks appear on the model while
inside it are removed afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from nnlab.i18n import _

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


class StopForward(Exception):
    """Raised by a capture hook to end a forward pass early once every wanted output is captured."""


def hook_count(model: nn.Module) -> int:
    """Number of forward, forward-pre and backward hooks on ``model`` and all its submodules."""
    return sum(len(getattr(m, d)) for m in model.modules()
               for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` ("" is the model), with a clear error for unknown names."""
    try:
        return model.get_submodule(name) if name else model
    except AttributeError as exc:
        raise KeyError(_("the model has no layer named {name}").format(name=repr(name))) from exc


@contextlib.contextmanager
def borrowed(model: nn.Module) -> Iterator[nn.Module]:
    """Remove on exit every hook added to ``model`` (or its submodules) while inside the block."""
    before = {id(m): {d: set(getattr(m, d, {}).keys()) for d in HOOK_DICTS} for m in model.modules()}
    try:
        yield model
    finally:
        for m in model.modules():
            old = before.get(id(m), {})
            for d in HOOK_DICTS:
                hooks = getattr(m, d, None)
                if hooks is None:
                    continue
                for key in [k for k in hooks if k not in old.get(d, set())]:
                    hooks.pop(key, None)


@contextlib.contextmanager
def forward_hooks(model: nn.Module, hooks: dict[str, Callable]) -> Iterator[None]:
    """Register forward hooks ``{layer name: fn(module, inputs, output)}`` for the duration of the block."""
    handles = []
    try:
        for name, fn in hooks.items():
            handles.append(get_module(model, name).register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def _detach(out: object) -> torch.Tensor | None:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        return None
    if out.is_quantized:
        out = out.dequantize()
    return out.detach().float()


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except RuntimeError:  # tensors without storage (e.g. some wrappers): copy to be safe
        return True


@contextlib.contextmanager
def capture_outputs(model: nn.Module, names: Iterable[str], stop_early: bool = False,
                    transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the outputs of the named layers during forward passes inside the block.

    Args:
        model: The model to hook.
        names: Layer names (as in ``model.named_modules()``).
        stop_early: Raise :class:`StopForward` once every named layer has produced its output, so the
            rest of the network is skipped; call the model through :func:`run_until_captured`.
        transform: Applied to each detached output before it is stored (e.g. a reduction).

    Yields:
        ``{name: tensor}``, filled (overwritten) by each forward pass. Stored tensors never alias the
        network's own (a later in-place op cannot change them).
    """
    names = list(names)
    store: dict[str, torch.Tensor] = {}

    def make(name: str) -> Callable:
        def fn(module: nn.Module, inputs: tuple, output: object) -> None:
            t = _detach(output)
            if t is not None:
                kept = transform(t) if transform else t
                if isinstance(kept, torch.Tensor) and _shares_memory(kept, t):
                    kept = kept.clone()  # later in-place ops (``out += identity``) must not change what we keep
                store[name] = kept
            if stop_early and all(n in store for n in names):
                raise StopForward
        return fn

    with forward_hooks(model, {n: make(n) for n in names}):
        yield store


def run_until_captured(model: nn.Module, x: torch.Tensor, store: dict[str, torch.Tensor]) -> None:
    """Run ``model(x)`` without gradients, ending quietly at :class:`StopForward`; ``store`` is cleared first."""
    store.clear()
    with torch.no_grad():
        try:
            model(x)
        except StopForward:
            pass
