"""Weight quantization (seed 000, Algorithms 2–3), FakeQuant with a straight-through estimator, binary weights.

Algorithm 2 (quantize a tensor ``X`` to ``b`` bits)::

    X_min, X_max = min(X, 0), max(X, 0)          # zero is always representable
    s = (X_max − X_min) / (2^b − 1)
    z = round(q_min − X_min / s)
    X_q = clamp(round(X / s) + z, q_min, q_max)

Algorithm 3 (dequantize): ``X̂ = s · (X_q − z)``.

Asymmetric quantization uses the unsigned range ``[0, 2^b − 1]`` exactly as above. Symmetric quantization
uses the restricted signed range ``[−(2^(b−1) − 1), 2^(b−1) − 1]`` with ``X_max = max|X| = −X_min``, so
``s = max|X| / (2^(b−1) − 1)`` and ``z = 0`` (the convention of ONNX Runtime's symmetric int8 weights).
Statistics are taken over the whole tensor (per tensor) or over each output channel (axis 0; per channel).
A range of zero (an all-zero tensor or channel) gets ``s = 1`` so nothing divides by zero.

Binary weights (seed 002, the extreme case): ``Ŵ_c = α_c · sign(W_c)`` with ``α_c = mean |W_c|`` per output
channel; stored as 1-bit codes ``q ∈ {0, 1}`` with ``s = 2α``, ``z = 1/2`` so Algorithm 3 gives ``±α``.

FakeQuant (seed 000): ``X̂ = Dequantize(Quantize(X))`` in the forward pass; the backward pass treats
``round`` as the identity (straight-through estimator), and the clamp passes no gradient outside the range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from compression import packing
from compression.packing import QuantSpec
from compression.registry import CompressContext, CompressResult, MethodConfig, check_choice, check_range, register
from nnlab.i18n import N_, _

SCHEMES = ("asymmetric", "symmetric")
GRANULARITIES = ("per-channel", "per-tensor")


# --- Algorithms 2 and 3 --------------------------------------------------------------------------------

def qrange(bits: int, symmetric: bool = False) -> tuple[int, int]:
    """``(q_min, q_max)``: ``[0, 2^b − 1]`` asymmetric, ``[−(2^(b−1) − 1), 2^(b−1) − 1]`` symmetric."""
    if not 1 <= bits <= 16:
        raise ValueError(_("bits must be 1–16, got {bits}").format(bits=bits))
    if symmetric:
        if bits < 2:
            raise ValueError(_("symmetric quantization needs at least 2 bits (use binary weights for 1 bit)"))
        m = 2 ** (bits - 1) - 1
        return -m, m
    return 0, 2**bits - 1


def _reduce(x: torch.Tensor, axis: int | None, op: str) -> torch.Tensor:
    """Min / max over the whole tensor (``axis`` None) or over everything but ``axis``."""
    if axis is None:
        return getattr(x, op)()
    flat = x.transpose(0, axis).reshape(x.shape[axis], -1) if axis else x.reshape(x.shape[0], -1)
    return getattr(flat, op)(dim=1)


def _view(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or p.ndim == 0:
        return p
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.view(shape)


def compute_qparams(x: torch.Tensor, bits: int, symmetric: bool = False,
                    axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``s`` and zero-point ``z`` of Algorithm 2 (lines 1, 3, 4), per tensor or along ``axis``.

    Args:
        x: Floating tensor.
        bits: Bit width ``b``.
        symmetric: Symmetric signed range with ``z = 0`` (see the module docstring).
        axis: Channel axis for per-channel parameters (None: one pair for the tensor).

    Returns:
        ``(scale, zero_point)`` as float32 tensors, 0-d or of length ``x.shape[axis]``.
    """
    x = x.detach().float()
    qmin, qmax = qrange(bits, symmetric)
    x_min = torch.clamp(_reduce(x, axis, "amin"), max=0.0)  # min(X, 0)
    x_max = torch.clamp(_reduce(x, axis, "amax"), min=0.0)  # max(X, 0)
    if symmetric:
        x_max = torch.maximum(x_max, -x_min)
        scale = x_max / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale)
    scale = (x_max - x_min) / (2**bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(qmin - x_min / scale)
    return scale, zero_point


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool = False,
             axis: int | None = None) -> torch.Tensor:
    """Algorithm 2, line 5: ``X_q = clamp(round(X / s) + z, q_min, q_max)`` as int64."""
    qmin, qmax = qrange(bits, symmetric)
    s, z = _view(scale, x, axis), _view(zero_point, x, axis)
    return torch.clamp(torch.round(x.detach().float() / s) + z, qmin, qmax).to(torch.int64)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               axis: int | None = None) -> torch.Tensor:
    """Algorithm 3: ``X̂ = s · (X_q − z)`` in float32."""
    s, z = _view(scale.float(), q, axis), _view(zero_point.float(), q, axis)
    return s * (q.float() - z)


def quantize_tensor(x: torch.Tensor, bits: int, symmetric: bool = False, axis: int | None = None) -> QuantSpec:
    """Quantize ``x`` (Algorithm 2) into a :class:`QuantSpec` (integers, scale, zero-point) for packing.

    ``bits == 1`` gives binary weights (sign × per-channel mean |w|; see :func:`binarize`).
    """
    if bits == 1:
        return binarize(x, axis=0 if axis is not None or x.ndim > 1 else None)
    scale, zero_point = compute_qparams(x, bits, symmetric, axis)
    q = quantize(x, scale, zero_point, bits, symmetric, axis)
    return QuantSpec(q=q, scale=scale, zero_point=zero_point, bits=bits, axis=axis,
                     qmin=qrange(bits, symmetric)[0])


def binarize(w: torch.Tensor, axis: int | None = 0) -> QuantSpec:
    """Binary weights ``α · sign(W)`` with ``α = mean |W|`` per channel along ``axis`` (sign(0) taken as +1).

    Stored as 1-bit codes with ``s = 2α`` and ``z = 1/2``, so Algorithm 3 returns exactly ``±α``.
    """
    w = w.detach().float()
    if axis is None:
        alpha = w.abs().mean()
    else:
        alpha = w.abs().transpose(0, axis).reshape(w.shape[axis], -1).mean(dim=1)
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    q = (w >= 0).to(torch.int64)
    return QuantSpec(q=q, scale=2 * alpha, zero_point=torch.full_like(alpha, 0.5), bits=1, axis=axis, qmin=0)


# --- FakeQuant with a straight-through estimator ------------------------------------------------------

class _QuantSTE(torch.autograd.Function):
    """``clamp(round(v) + z, q_min, q_max)`` forward; backward passes the gradient unchanged where the value
    lies inside ``[q_min, q_max]`` (bounds included) and blocks it where it was clipped (the STE)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:  # noqa: ANN001
        q = torch.round(v) + z
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return torch.clamp(q, qmin, qmax)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:  # noqa: ANN001
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = False, axis: int | None = None,
                  scale: torch.Tensor | None = None, zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """FakeQuant(X) = Dequantize(Quantize(X)) with a straight-through gradient.

    Forward: ``s · (clamp(round(X/s) + z, q_min, q_max) − z)`` — the values the integer model will see.
    Backward: gradient 1 where ``round(X/s) + z`` lies inside ``[q_min, q_max]``, 0 where it is clipped.
    ``scale`` / ``zero_point`` default to those of Algorithm 2 computed from ``x`` itself (not differentiated).
    """
    if scale is None or zero_point is None:
        scale, zero_point = compute_qparams(x, bits, symmetric, axis)
    qmin, qmax = qrange(bits, symmetric)
    s, z = _view(scale.to(x.dtype), x, axis), _view(zero_point.to(x.dtype), x, axis)
    q = _QuantSTE.apply(x / s, z, qmin, qmax)
    return s * (q - z)


# --- whole models ---------------------------------------------------------------------------------------

def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and Linear layers (the weights that get quantized), in module order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(getattr(m, "weight", None),
                                                                                  torch.Tensor)]


FLOAT_BITS = 32  # a per-layer level of 32 bits leaves the layer in float32


def parse_bits(text: str, method: str = "per_layer") -> dict[str, int]:
    """Parse ``"features.0=4, classifier.2=32"`` into ``{name: bits}`` (1–8 bits, or 32 = float32)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, value = part.partition("=")
        try:
            bits = int(value.strip())
        except ValueError:
            bits = -1
        if not sep or not name.strip() or not (1 <= bits <= 8 or bits == FLOAT_BITS):
            raise ValueError(_("{method}: per_layer entry {part!r} must be name=bits with bits 1–8, or 32 for "
                               "float32").format(
                method=method, part=part))
        out[name.strip()] = bits
    return out


def quantize_model_weights(model: nn.Module, bits: int, symmetric: bool = False, per_channel: bool = True,
                           keep_first_last: bool = False,
                           per_layer: dict[str, int] | None = None) -> tuple[dict[str, QuantSpec], list[dict]]:
    """Replace each Conv/Linear weight of ``model`` (in place) by its dequantized value.

    Biases and BatchNorm stay in float32. ``per_layer`` gives some layers their own bit width (32: left in
    float32); the others use ``bits``. Returns the integer form of each quantized weight (state-dict key →
    :class:`QuantSpec`) and one row per layer (name, bits, scheme, granularity, max error, s/2).
    """
    layers = quantizable_layers(model)
    per_layer = dict(per_layer or {})
    unknown = sorted(set(per_layer) - {n for n, _ in layers})
    if unknown:
        raise ValueError(_("no Conv/Linear layer named {unknown}").format(unknown=', '.join(unknown)))
    skip = {layers[0][0], layers[-1][0]} if keep_first_last and len(layers) > 1 else set()
    specs: dict[str, QuantSpec] = {}
    rows: list[dict] = []
    for name, mod in layers:
        bits_here = per_layer.get(name, bits)
        if name in skip or bits_here == FLOAT_BITS:
            rows.append({"name": name, "bits": 32, "quantized": False})
            continue
        w = mod.weight.detach().clone()
        spec = quantize_tensor(w, bits_here, symmetric, axis=0 if per_channel else None)
        w_hat = spec.dequantize().to(w.dtype)  # exactly what packing's loader computes
        with torch.no_grad():
            mod.weight.copy_(w_hat)
        specs[f"{name}.weight" if name else "weight"] = spec
        err = float((w_hat - w).abs().max()) if w.numel() else 0.0
        rows.append({"name": name, "bits": bits_here, "quantized": True,
                     "scheme": "binary" if bits_here == 1 else ("symmetric" if symmetric else "asymmetric"),
                     "granularity": "per-channel" if per_channel or bits_here == 1 else "per-tensor",
                     "max_abs_error": err, "half_step": float(spec.scale.max()) / 2,
                     "levels_used": int(torch.unique(spec.q).numel())})
    return specs, rows


@dataclass(frozen=True)
class WeightQuantConfig(MethodConfig):
    """Weight-only quantization (Algorithms 2–3); 1 bit means binary weights."""

    method: ClassVar[str] = "quantize-weights"
    label: ClassVar[str] = N_("Weight quantization (2–8 bit, binary)")
    family: ClassVar[str] = "quantization"
    description: ClassVar[str] = (N_("Conv/Linear weights rounded to b-bit integers with a scale and zero-point "
                                  "(seed 000, Algorithms 2–3) and stored bit-packed; computation stays float."))

    bits: int = field(default=8, metadata={"help": N_("Bits per weight (1 = binary: sign × mean |w|)"),
                                           "formula": "s=(X_max−X_min)/(2^b−1), z=round(q_min−X_min/s)",
                                           "min": 1, "max": 8})
    scheme: str = field(default="asymmetric", metadata={"help": N_("Asymmetric (zero-point) or symmetric (z = 0)"),
                                                        "choices": SCHEMES})
    granularity: str = field(default="per-channel", metadata={"help": N_("One scale per output channel or per tensor"),
                                                              "choices": GRANULARITIES})
    keep_first_last: bool = field(default=False, metadata={"help": N_("Leave the first and last layers in float32")})
    per_layer: str = field(default="", metadata={"help": N_("Per-layer bit widths 'name=bits,...' (e.g. from the "
                                                         "sensitivity analysis; 32 leaves a layer in float32); "
                                                         "other layers use `bits`")})

    def __post_init__(self) -> None:
        check_range(self, "bits", 1, 8)
        if self.bits != int(self.bits):
            raise ValueError(_("{method}: bits must be a whole number, got {bits!r}").format(
                method=self.method, bits=self.bits))
        check_choice(self, "scheme", SCHEMES)
        check_choice(self, "granularity", GRANULARITIES)
        parse_bits(self.per_layer, self.method)


@register(WeightQuantConfig)
def quantize_weights_handler(model: nn.Module, cfg: WeightQuantConfig, ctx: CompressContext) -> CompressResult:
    """Quantize the weights of ``model`` (already a copy) and write them bit-packed with scales and zero-points."""
    ctx.report(_("quantizing weights"), 0.1)
    model = model.cpu().eval()
    try:
        specs, rows = quantize_model_weights(model, cfg.bits, cfg.scheme == "symmetric",
                                             cfg.granularity == "per-channel", cfg.keep_first_last,
                                             parse_bits(cfg.per_layer, cfg.method))
    except ValueError as exc:
        raise ValueError(f"{cfg.method}: {exc}") from None
    ctx.check_cancel()
    c, h, w = ctx.data.input_shape
    meta = {"arch": ctx.arch, "input_shape": [c, h, w], "num_classes": ctx.data.num_classes,
            "method": cfg.method, "config": cfg.to_dict()}
    path = ctx.workdir / "model.nnlp"
    packed = packing.save_packed(path, {k: v.detach().cpu() for k, v in model.state_dict().items()}, specs, meta)
    stored = {r["name"]: r for r in packed}
    for r in rows:
        e = stored.get(f"{r['name']}.weight")
        if e:
            r["stored_bytes"] = e["bytes"]
    ctx.report(_("weights quantized"), 1.0)
    return CompressResult(model=model, layers=rows, artifact=path, artifact_format=packing.FORMAT,
                          extra={"quantized_layers": len(specs), "bits": cfg.bits,
                                 "note": "weights stored as b-bit integers; compute in float32 after dequantization"})
