"""Quantization-aware training (seed 000 "FakeQuant", seed 001): fine-tune through fake quantization, then int8.

1. Conv+BatchNorm pairs are folded into one convolution (the int8 runtime folds them too, so training sees the
   weights that will be quantized).
2. Each Conv/Linear is wrapped: its input goes through FakeQuant with an asymmetric uint8 range tracked by an
   exponential moving average of min/max (frozen in eval mode), its weight through symmetric per-channel
   int8 FakeQuant — ONNX Runtime's and torch.ao's weight scheme. The straight-through estimator of
   :func:`compression.quantization.fake_quantize` lets gradients pass ``round``.
3. ``nnlab.train.train_model`` fine-tunes the wrapped model.
4. The wrappers are removed, each weight set to its fake-quantized value (it lies on the int8 grid), and the
   model is converted to a real int8 model with :func:`compression.int8.to_int8` (activation calibration).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from compression.int8 import BACKENDS, Int8Config, calibration_inputs, to_int8
from compression.quantization import compute_qparams, fake_quantize
from compression.registry import CompressContext, CompressResult, MethodConfig, check_choice, check_range, register
from nnlab.i18n import N_, _
from nnlab.train import Progress, TrainConfig, train_model


# --- BatchNorm folding -----------------------------------------------------------------------------------

def _set_module(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """Fold every Conv→BatchNorm pair into the convolution (eval statistics); returns ``(model, pairs folded)``.

    Uses torch.fx to find pairs anywhere in the graph; models that FX cannot trace fall back to pairs that sit
    next to each other inside an ``nn.Sequential`` (the BatchNorm becomes ``nn.Identity``).
    """
    model = model.eval()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - data-dependent Python control flow
        return _fold_sequential(model)
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        prev = node.args[0]
        if not (isinstance(prev, torch.fx.Node) and prev.op == "call_module" and len(prev.users) == 1
                and isinstance(modules.get(prev.target), nn.modules.conv._ConvNd)):
            continue
        _set_module(gm, prev.target, fuse_conv_bn_eval(modules[prev.target], modules[node.target]))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        _set_module(gm, node.target, nn.Identity())
        folded += 1
    gm.graph.lint()
    gm.recompile()
    return gm, folded


def _fold_sequential(model: nn.Module) -> tuple[nn.Module, int]:
    folded = 0
    for mod in model.modules():
        if isinstance(mod, nn.Sequential):
            keys = list(mod._modules)
            for a, b in zip(keys, keys[1:]):
                conv, bn = mod._modules[a], mod._modules[b]
                if isinstance(conv, nn.modules.conv._ConvNd) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                    mod._modules[a] = fuse_conv_bn_eval(conv, bn)
                    mod._modules[b] = nn.Identity()
                    folded += 1
    return model, folded


# --- fake-quantized layers --------------------------------------------------------------------------------

class ActFakeQuant(nn.Module):
    """FakeQuant of activations, asymmetric uint8, range = EMA of batch min/max (training), frozen in eval."""

    def __init__(self, bits: int = 8, momentum: float = 0.1) -> None:
        super().__init__()
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min(), x.detach().max()
        if not bool(self.seen):
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.seen.fill_(True)
        else:
            self.lo.lerp_(lo, self.momentum)
            self.hi.lerp_(hi, self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.observe(x)
        if not bool(self.seen):
            return x
        scale, zp = compute_qparams(torch.stack([self.lo, self.hi]), self.bits)
        return fake_quantize(x, self.bits, scale=scale.to(x.device), zero_point=zp.to(x.device))


class QATLayer(nn.Module):
    """A Conv/Linear whose input and weight pass through FakeQuant (weights: symmetric, per output channel)."""

    def __init__(self, layer: nn.Module, bits: int = 8) -> None:
        super().__init__()
        self.layer = layer
        self.bits = bits
        self.act = ActFakeQuant(bits)

    def quantized_weight(self) -> torch.Tensor:
        return fake_quantize(self.layer.weight, self.bits, symmetric=True, axis=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        w = self.quantized_weight()
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def insert_fake_quant(model: nn.Module, bits: int = 8) -> list[str]:
    """Wrap every Conv/Linear of ``model`` (in place) in :class:`QATLayer`; returns the wrapped names."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and n]
    for n in names:
        _set_module(model, n, QATLayer(model.get_submodule(n), bits))
    return names


def remove_fake_quant(model: nn.Module) -> nn.Module:
    """Unwrap (in place) every :class:`QATLayer`, its weight replaced by the fake-quantized (on-grid) value."""
    for n, m in list(model.named_modules()):
        if isinstance(m, QATLayer):
            with torch.no_grad():
                m.layer.weight.copy_(m.quantized_weight())
            _set_module(model, n, m.layer)
    return model


# --- the method -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QATConfig(MethodConfig):
    """Fine-tune with fake quantization (straight-through estimator), then convert to a real int8 model."""

    method: ClassVar[str] = "qat"
    label: ClassVar[str] = N_("Quantization-aware training → int8")
    family: ClassVar[str] = "quantization"
    description: ClassVar[str] = (N_("Fine-tunes with FakeQuant on weights (int8, per channel) and activations (uint8) "
                                  "so the network adapts to rounding, then runs it in a real int8 runtime."))

    epochs: int = field(default=2, metadata={"help": N_("Fine-tuning epochs with fake quantization"),
                                             "min": 1, "max": 50})
    lr: float = field(default=5e-4, metadata={"help": N_("Peak learning rate of the fine-tuning"), "min": 1e-6,
                                              "max": 1e-1})
    batch_size: int = field(default=64, metadata={"help": N_("Samples per step"), "min": 1, "max": 4096})
    train_samples: int = field(default=0, metadata={"help": N_("Training samples used (0: all)"), "min": 0,
                                                    "max": 1000000})
    calibration_samples: int = field(default=256, metadata={"help": N_("Samples for the final activation calibration"),
                                                            "min": 1, "max": 10000})
    backend: str = field(default="onnxruntime", metadata={"help": N_("Runtime that executes the int8 model"),
                                                          "choices": BACKENDS})
    threads: int = field(default=0, metadata={"help": N_("Runtime threads (0: PyTorch's current setting)"),
                                              "min": 0, "max": 256})

    def __post_init__(self) -> None:
        check_range(self, "epochs", 1, 50)
        check_range(self, "lr", 1e-6, 0.1)
        check_range(self, "batch_size", 1, 4096)
        check_range(self, "train_samples", 0, 1_000_000)
        check_range(self, "calibration_samples", 1, 100000)
        check_choice(self, "backend", BACKENDS)
        check_range(self, "threads", 0, 256)


@register(QATConfig)
def qat_handler(model: nn.Module, cfg: QATConfig, ctx: CompressContext) -> CompressResult:
    """Fold BatchNorm, fine-tune through FakeQuant, unwrap onto the int8 grid, convert to real int8."""
    data = ctx.data
    model, folded = fold_batchnorm(model.cpu().eval())
    wrapped = insert_fake_quant(model)
    calib = calibration_inputs(data, cfg.calibration_samples, ctx.seed)
    model.train()
    with torch.no_grad():  # initial activation ranges from the calibration samples
        model(calib)
    n = len(data.y_train)
    indices = None
    if cfg.train_samples and cfg.train_samples < n:
        indices = np.sort(np.random.default_rng(ctx.seed).permutation(n)[:cfg.train_samples])

    def progress(p: Progress) -> None:
        ctx.report(_("QAT {message}").format(message=p.message), 0.05 + 0.75 * p.fraction)

    history = train_model(model, data, TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                                                   seed=ctx.seed, eval_test=False),
                          indices=indices, progress=progress, cancel=ctx.cancel, device=torch.device(ctx.device))
    ctx.check_cancel()
    model = remove_fake_quant(model.cpu().eval())
    ctx.report(_("QAT: converting to int8"), 0.85)
    result = to_int8(model, data, Int8Config(backend=cfg.backend, calibration_samples=cfg.calibration_samples,
                                             threads=cfg.threads), ctx.workdir, calib=calib, seed=ctx.seed)
    result.extra.update({"qat_history": [h.to_dict() for h in history], "batchnorm_folded": folded,
                         "fake_quantized_layers": len(wrapped)})
    ctx.report(_("QAT done"), 1.0)
    return result


def qat_copy(model: nn.Module) -> nn.Module:
    """A BN-folded, fake-quantized copy of ``model`` (for inspection and tests); ``model`` is untouched."""
    m, _ = fold_batchnorm(copy.deepcopy(model).cpu().eval())
    insert_fake_quant(m)
    return m
