"""Reproducible randomness without the global RNG: every job brings its own ``torch.Generator``.

``torch.manual_seed`` is process-wide: a job that calls it changes the random numbers of every other session's
job running at the same time. Instead, initial weights are redrawn from a job's generator
(:func:`seeded_init`) and dropout masks come from it (:func:`seeded_dropout`), on the job's private model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def seeded_init(model: nn.Module, seed: int) -> nn.Module:
    """Redraw every random-looking parameter from a generator seeded with ``seed`` (in place; returns the model).

    Each floating parameter with more than one value and a nonzero spread is replaced by normal samples with its
    own mean and standard deviation (so the architecture's init scale is kept); constant parameters (norm
    weights of 1, zero biases) stay as built. The same architecture and seed always give the same weights.
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_floating_point() or p.numel() < 2:
                continue
            std = float(p.detach().float().std())
            if std <= 0 or std != std:
                continue
            mean = float(p.detach().float().mean())
            draw = torch.randn(p.shape, generator=g, dtype=torch.float32) * std + mean
            p.copy_(draw.to(dtype=p.dtype, device=p.device))
    return model


def _dropout_forward(module: nn.Module, generator: torch.Generator):  # noqa: ANN202 - a bound forward
    def forward(x: torch.Tensor) -> torch.Tensor:
        p = float(module.p)
        if not module.training or p == 0.0:
            return x
        if p >= 1.0:
            return torch.zeros_like(x)
        keep = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)
        return x * keep / (1.0 - p)

    return forward


@contextlib.contextmanager
def seeded_dropout(model: nn.Module, generator: torch.Generator) -> Iterator[None]:
    """Within the block, the model's ``nn.Dropout`` layers draw their masks from ``generator``.

    Only this model instance changes (its dropout modules get an instance-level ``forward``), and only until
    the block ends, so a model shared with other threads must not be passed: pass the job's own copy.
    """
    patched = [m for m in model.modules() if type(m) is nn.Dropout]  # element-wise dropout only
    for m in patched:
        m.forward = _dropout_forward(m, generator)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
