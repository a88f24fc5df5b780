"""Reproducible randomness without the global RNG: every job brings its own ``torch.Generator``.

``torch.manual_seed`` is process-wide: a job that calls it changes the random numbers of every other session's
job running at the same time. Instead, initial weights are redrawn from a job's generator
(:func:`seeded_init`) and dropout masks come from it (:func:`seeded_dropout`), on the job's private model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn


def seeded_init(model: nn.Module, seed: int) -> nn.Module:
    """Redraw every random parameter from a generator seeded with ``seed`` (in place; returns the model).

    The result depends only on the architecture and the seed, never on the global RNG or on the values the
    constructor happened to draw: a parameter the constructor set to a constant (norm weights of 1, zero biases,
    zero-initialised gates) stays; every other one is drawn from PyTorch's default for Conv/Linear layers,
    ``U(−1/√fan_in, 1/√fan_in)`` (kaiming-uniform with a = √5), where ``fan_in`` is the size of one output unit of
    the layer's weight. Architectures whose own init differs (e.g. ResNet's kaiming-normal) start from this scale.
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            unit = int(weight[0].numel()) if isinstance(weight, torch.Tensor) and weight.ndim >= 2 else 0
            for _, p in sorted(module.named_parameters(recurse=False)):
                if not p.is_floating_point() or p.numel() < 2 or bool((p == p.flatten()[0]).all()):
                    continue
                fan_in = int(p[0].numel()) if p.ndim >= 2 else (unit or p.numel())
                bound = 1.0 / math.sqrt(max(1, fan_in))
                draw = torch.empty(p.shape, dtype=torch.float32).uniform_(-bound, bound, generator=g)
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
