"""Reproducible random weights without the global RNG: the same seed gives the same state dict (and id).

Constructors draw their initial weights from torch's global generator, so two builds of one architecture
differ, and seeding them would mean ``torch.manual_seed`` (global state shared with every other thread).
:func:`seeded_init` redraws every parameter from a private ``torch.Generator`` seeded per tensor from
``(seed, parameter name)``, so a parameter's values do not depend on which other layers exist:

* conv weights: He normal with fan-out ``out × kh × kw / groups`` (torchvision's and timm's CNN scheme);
* linear weights and other non-constant parameters (embeddings, position embeddings, class tokens):
  truncated normal, std 0.02 (timm's transformer scheme);
* biases: zero; norm layers: weight 1, bias 0, running mean 0, running variance 1;
* constant parameters (layer-scale ``gamma`` = 1e-6, zero-initialised tokens) keep their value.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _trunc_normal(shape: torch.Size, std: float, g: torch.Generator) -> torch.Tensor:
    """Normal(0, std²) truncated at ±2 std, by redrawing the values outside (faster than inverse-CDF sampling)."""
    t = torch.randn(shape, generator=g)
    bad = t.abs() > 2
    while bool(bad.any()):
        t[bad] = torch.randn(int(bad.sum()), generator=g)
        bad = t.abs() > 2
    return t * std


def _draw(module: nn.Module, pname: str, p: torch.Tensor, g: torch.Generator) -> torch.Tensor | None:
    """New values for parameter ``pname`` of ``module``; None keeps the current (constant) values."""
    if isinstance(module, _NORMS):
        return torch.ones_like(p, device="cpu") if pname == "weight" else torch.zeros_like(p, device="cpu")
    if pname == "bias":
        return torch.zeros_like(p, device="cpu")
    if isinstance(module, nn.modules.conv._ConvNd) and pname == "weight":
        out, _, *k = p.shape
        fan_out = max(1, out * math.prod(k) // max(1, module.groups))
        return torch.randn(p.shape, generator=g) * math.sqrt(2.0 / fan_out)
    if (isinstance(module, nn.Linear) and pname == "weight") or (p.numel() > 1 and bool((p != p.reshape(-1)[0]).any())):
        return _trunc_normal(p.shape, 0.02, g)
    return None  # constant by design (layer scale, zero tokens): already reproducible


@torch.no_grad()
def seeded_init(model: nn.Module, seed: int, modules: list[str] | None = None) -> nn.Module:
    """Redraw the parameters of ``model`` (in place) reproducibly from ``seed``; returns the model.

    Args:
        model: Edited in place (call it on a model you own, e.g. just built).
        seed: Any integer; the same seed and architecture give the same state dict.
        modules: Only these submodules (e.g. a freshly made classifier on pretrained weights); default all.

    The global RNG is neither read nor changed.
    """
    prefixes = None if modules is None else tuple(modules)
    for mname, module in model.named_modules():
        if prefixes is not None and not any(mname == p or mname.startswith(p + ".") for p in prefixes):
            continue
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            new = _draw(module, pname, p, _generator(seed, full))
            if new is not None:
                p.copy_(new.to(p.dtype))
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            module.reset_running_stats()
    return model
