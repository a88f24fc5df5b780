"""Dropout masks from a job's own ``torch.Generator``, not the global RNG.

``torch.manual_seed`` is process-wide: a job that calls it changes the random numbers of every other session's
job running at the same time. Initial weights are drawn reproducibly by :func:`nnlab.models.randinit.seeded_init`;
dropout masks come from the run's generator (:func:`seeded_dropout`), on the job's private model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


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
