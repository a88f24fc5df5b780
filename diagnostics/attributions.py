"""Deconvnet and attribution maps through Captum, with ReLUs made safe first.

Captum's ``Deconvolution`` (Zeiler & Fergus), ``GuidedBackprop`` and ``GuidedGradCam`` change the
backward pass of ``nn.ReLU`` *modules* only. Models that call ReLU functionally or in place would get a
silently wrong map, so :func:`prepare` works on a deep copy where

* every ``nn.ReLU`` (in place or not) is swapped for a non-in-place ReLU module, and
* functional ReLU calls (``F.relu``, ``torch.relu``, ``x.relu()``, their in-place forms) are counted by a
  dry run and, during the guided methods, routed through an autograd function that applies the same
  rule as Captum's hook (deconvnet: ``relu(grad_out)``; guided: ``relu(grad_out · [x > 0])``).

Other activations (ReLU6, SiLU, GELU …) keep their ordinary gradient, as in Captum; :func:`prepare` says so
(a vision transformer has no ReLU: its deconvnet and guided backprop maps are the plain gradient).

Grad-CAM on a channel-first conv layer is Captum's ``LayerGradCam``. On a layer whose output is not
``N×C×H×W`` (a vision transformer's ``N×T×D`` tokens, a channels-last ConvNeXt block) the same formula is
applied after laying the output out channel-first (:func:`diagnostics.features.to_map`: the patch tokens
as their grid, prefix tokens left out), where Captum would average over the wrong dimension.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from diagnostics.features import output_layout, to_map
from diagnostics.filters import diverging_rgb
from diagnostics.hooks import borrowed, forward_hooks
from nnlab.i18n import N_, _, ngettext
from nnlab.models.archinfo import ArchInfo, arch_info

METHODS = {  # method → its name for the reader (shown through _())
    "deconvnet": N_("Deconvnet (Zeiler & Fergus)"),
    "guided_backprop": N_("Guided backprop"),
    "saliency": N_("Saliency (|gradient|)"),
    "integrated_gradients": N_("Integrated gradients"),
    "gradcam": N_("Grad-CAM (upsampled)"),
    "guided_gradcam": N_("Guided Grad-CAM"),
    "occlusion": N_("Occlusion"),
}
GUIDED = {"deconvnet", "guided_backprop", "guided_gradcam"}
NEEDS_LAYER = {"gradcam", "guided_gradcam"}
_RELU_FUNCS = {F.relu, torch.relu, torch.Tensor.relu, torch.relu_, torch.Tensor.relu_, F.relu_}
_INPLACE_FUNCS = {torch.relu_, torch.Tensor.relu_, F.relu_}
_OTHER_ACTS = (nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.PReLU,
               nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Softplus)
_inside = threading.local()
# Captum's notes about what it does here on purpose (hooks on the ReLUs, the input made to require gradients).
# Silenced once, by message and module, at import: never by changing the filters around a call, which
# ``warnings.catch_warnings`` does for the whole process (not thread-safe: pages and jobs attribute concurrently).
CAPTUM_NOTES = (r"Setting backward hooks on ReLU activations", r"Input Tensor \d+ did not already require gradients")


def silence_captum_notes() -> None:
    """Add the filters ignoring :data:`CAPTUM_NOTES` from Captum's modules (done at import; idempotent)."""
    for message in CAPTUM_NOTES:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=r"captum\.")


silence_captum_notes()


class _ModuleReLU(nn.ReLU):
    """A non-in-place ``nn.ReLU`` that marks its own functional call (so it is not counted twice)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = getattr(_inside, "depth", 0)
        _inside.depth = depth + 1
        try:
            return F.relu(x)
        finally:
            _inside.depth = depth


class _RuleReLU(torch.autograd.Function):
    """ReLU forward; backward by the deconvnet or guided-backprop rule (as Captum's ReLU hook)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: str) -> torch.Tensor:  # type: ignore[override]
        ctx.rule = rule
        ctx.save_for_backward(x > 0)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return (g.clamp_min(0) if ctx.rule == "deconv" else (g * mask).clamp_min(0)), None


class _FunctionalReLUs(TorchFunctionMode):
    """Counts functional ReLU calls outside ReLU modules; with a rule, applies it to them."""

    def __init__(self, rule: str | None = None) -> None:
        super().__init__()
        self.rule = rule
        self.calls = 0
        self.inplace_calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_FUNCS and getattr(_inside, "depth", 0) == 0:
            self.calls += 1
            inplace = func in _INPLACE_FUNCS or bool(kwargs.get("inplace", False))
            self.inplace_calls += int(inplace)
            if self.rule is not None:
                x = args[0]
                y = _RuleReLU.apply(x, self.rule)
                return x.copy_(y) if inplace else y
        return func(*args, **kwargs)


@dataclass
class Prepared:
    """A model made ready for attributions (a private copy) and what was found on the way."""

    model: nn.Module
    relu_modules: int
    inplace_modules: int
    functional_calls: int
    other_activations: dict[str, int] = field(default_factory=dict)
    info: ArchInfo | None = None
    layouts: dict[tuple[str, tuple[int, ...]], str] = field(default_factory=dict, repr=False)

    def notes(self) -> list[str]:
        """Plain-language notes for the page (empty when the model needs none)."""
        out = []
        if self.info is not None and self.info.kind == "vit":
            out.append(_("Vision transformer: the only convolution is the patch embedding; feature maps and "
                         "Grad-CAM show the patch tokens laid out as their grid (class token left out).") + " "
                       + self.info.gradcam_note)
        if not self.relu_modules and not self.functional_calls and self.other_activations:
            out.append(_("This model has no ReLU, so deconvnet and guided backprop rectify nothing: both show the "
                         "plain gradient (like saliency, but signed)."))
        if self.inplace_modules:
            out.append(ngettext("{n} in-place nn.ReLU module(s) were replaced by non-in-place copies (on a private "
                                "copy of the model) so the backward hooks see them.",
                                "{n} in-place nn.ReLU module(s) were replaced by non-in-place copies (on a private "
                                "copy of the model) so the backward hooks see them.",
                                self.inplace_modules).format(n=self.inplace_modules))
        if self.functional_calls:
            out.append(ngettext("{n} functional ReLU call(s) per forward pass (not nn.ReLU modules) are routed "
                                "through the same deconvnet/guided-backprop rule as the modules.",
                                "{n} functional ReLU call(s) per forward pass (not nn.ReLU modules) are routed "
                                "through the same deconvnet/guided-backprop rule as the modules.",
                                self.functional_calls).format(n=self.functional_calls))
        if self.other_activations:
            kinds = ", ".join(f"{k} ×{v}" for k, v in self.other_activations.items())
            out.append(_("Other activations ({kinds}) keep their ordinary gradient in deconvnet and guided "
                         "backprop: only ReLUs are rectified backwards (Captum's definition).").format(kinds=kinds))
        return out


def _swap_relus(model: nn.Module) -> tuple[int, int]:
    """Replace every ``nn.ReLU`` of ``model`` (in place) by a :class:`_ModuleReLU`; shared instances stay shared."""
    new: dict[int, nn.Module] = {}
    count = inplace = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU or (isinstance(child, nn.ReLU) and not isinstance(child, _ModuleReLU)):
                if id(child) not in new:
                    new[id(child)] = _ModuleReLU()
                    count += 1
                    inplace += int(child.inplace)
                setattr(parent, name, new[id(child)])
    return count, inplace


def prepare(model: nn.Module, example: torch.Tensor) -> Prepared:
    """Deep-copy ``model``, make its ReLUs safe for the guided methods and count functional ReLU calls.

    Args:
        example: One normalised input ``1×C×H×W`` for the dry run.
    """
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    relus, inplace = _swap_relus(m)
    others: dict[str, int] = {}
    for mod in m.modules():
        if isinstance(mod, _OTHER_ACTS) or type(mod).__module__.startswith("timm.layers.activations"):
            others[type(mod).__name__] = others.get(type(mod).__name__, 0) + 1
    counter = _FunctionalReLUs(None)
    with torch.no_grad(), counter:
        m(example[:1].to(_device(m)))
    return Prepared(m, relus, inplace, counter.calls, others, arch_info(m))


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@dataclass
class Attribution:
    """One attribution map.

    Attributes:
        values: ``C×H×W`` for input-space methods, ``1×H×W`` for Grad-CAM (upsampled to the input).
        delta: Integrated gradients' convergence delta (NaN for other methods).
    """

    method: str
    target: int
    values: np.ndarray
    delta: float = float("nan")


def attribute(prep: Prepared, x: torch.Tensor, method: str, target: int, ig_steps: int = 32,
              layer: str | None = None, window: int = 3, stride: int | None = None) -> Attribution:
    """Compute one attribution map for input ``x`` (``1×C×H×W``, normalised) and class ``target``.

    Args:
        prep: From :func:`prepare`.
        method: A key of :data:`METHODS`.
        ig_steps: Integrated-gradients steps (baseline: the zero input, i.e. the dataset mean image).
        layer: Grad-CAM layer name (required for "gradcam" and "guided_gradcam").
        window: Occlusion window side in pixels (stride: ``stride`` or half the window; baseline 0 = mean).

    Raises:
        ValueError: unknown method, missing layer, or a target outside the model's classes.
    """
    from captum.attr import (
        Deconvolution,
        GuidedBackprop,
        GuidedGradCam,
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        Occlusion,
        Saliency,
    )

    if method not in METHODS:
        raise ValueError(_("unknown method {method}; choose one of {choices}").format(
            method=repr(method), choices=", ".join(METHODS)))
    if method in NEEDS_LAYER and not layer:
        raise ValueError(_("{method} needs a layer").format(method=_(METHODS[method])))
    m = prep.model
    x = x[:1].detach().to(_device(m)).float()
    delta = float("nan")
    with borrowed(m):
        mode = _FunctionalReLUs("deconv" if method == "deconvnet" else "guided") if method in GUIDED else None
        if mode is not None:
            mode.__enter__()
        try:
            if method == "deconvnet":
                a = Deconvolution(m).attribute(x, target=target)
            elif method == "guided_backprop":
                a = GuidedBackprop(m).attribute(x, target=target)
            elif method == "saliency":
                a = Saliency(m).attribute(x, target=target, abs=True)
            elif method == "integrated_gradients":
                a, d = IntegratedGradients(m).attribute(x, target=target, n_steps=int(ig_steps),
                                                        internal_batch_size=16, return_convergence_delta=True)
                delta = float(d.abs().max())
            elif method in NEEDS_LAYER and _layer_layout(prep, layer, x) != "chw":
                cam = layer_gradcam(prep, x, layer, target)
                if method == "gradcam":
                    a = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
                else:  # Captum's guided Grad-CAM: guided backprop × the map upsampled by nearest neighbour
                    a = GuidedBackprop(m).attribute(x, target=target) * LayerAttribution.interpolate(
                        cam, tuple(x.shape[-2:]), interpolate_mode="nearest")
            elif method == "gradcam":
                cam = LayerGradCam(m, m.get_submodule(layer)).attribute(x, target=target, relu_attributions=True)
                a = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
            elif method == "guided_gradcam":
                a = GuidedGradCam(m, m.get_submodule(layer)).attribute(x, target=target)
            else:
                s = stride or max(1, window // 2)
                c = x.shape[1]
                a = Occlusion(m).attribute(x, target=target, sliding_window_shapes=(c, window, window),
                                           strides=(c, s, s), baselines=0.0, perturbations_per_eval=32)
        finally:
            if mode is not None:
                mode.__exit__(None, None, None)
    return Attribution(method, int(target), a.detach()[0].cpu().double().numpy(), delta)


def _layer_layout(prep: Prepared, layer: str, x: torch.Tensor) -> str:
    """The layout of ``layer``'s output (:func:`diagnostics.features.output_layout`) for inputs like ``x``."""
    key = (layer, tuple(x.shape[1:]))
    if key in prep.layouts:
        return prep.layouts[key]
    m = prep.model
    module = m.get_submodule(layer)
    found: list[str] = []
    tokens = prep.info.tokens if prep.info is not None else None

    def hook(mod: nn.Module, inputs: tuple, output: object) -> None:
        t = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(t, torch.Tensor) and not found:
            found.append(output_layout(mod, t, tuple(x.shape[-2:]), tokens))

    with torch.no_grad(), forward_hooks(m, {layer: hook}):
        m(x[:1])
    if not found:
        raise ValueError(_("layer {layer} produced no tensor output").format(layer=repr(layer)))
    if found[0] in ("vector", "other"):
        raise ValueError(_("Grad-CAM needs a layer with a spatial or token output; {layer} ({type}) has none").format(
            layer=repr(layer), type=type(module).__name__))
    prep.layouts[key] = found[0]
    return found[0]


def layer_gradcam(prep: Prepared, x: torch.Tensor, layer: str, target: int) -> torch.Tensor:
    """Grad-CAM ``1×1×h×w`` at ``layer`` with its output laid out channel-first first (tokens as their grid).

    Same formula as Captum's ``LayerGradCam``: ``relu(Σ_c mean_hw(∂y/∂A_c) · A_c)``.
    """
    m = prep.model
    hw = tuple(x.shape[-2:])
    tokens = prep.info.tokens if prep.info is not None else None
    store: dict[str, tuple[torch.Tensor, str]] = {}

    def hook(mod: nn.Module, inputs: tuple, output: object) -> None:
        t = output[0] if isinstance(output, (tuple, list)) else output
        store["a"] = (t, output_layout(mod, t, hw, tokens))

    xi = x[:1].detach().clone().requires_grad_(True)
    with forward_hooks(m, {layer: hook}):
        out = m(xi)
    act, layout = store["a"]
    (grad,) = torch.autograd.grad(out[0, int(target)], act)
    a_map, g_map = to_map(act.detach(), layout, hw, tokens), to_map(grad, layout, hw, tokens)
    weights = g_map.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * a_map).sum(dim=1, keepdim=True))


def check_target(num_classes: int, target: int) -> int:
    """Validate a target class index."""
    if not 0 <= int(target) < num_classes:
        raise ValueError(_("target class {target} is outside 0–{last}").format(target=target, last=num_classes - 1))
    return int(target)


def predict(prep: Prepared, x: torch.Tensor) -> np.ndarray:
    """Softmax probabilities of the prepared model for one input."""
    with torch.no_grad():
        return torch.softmax(prep.model(x[:1].to(_device(prep.model))).float(), 1)[0].cpu().numpy()


def gradcam_layers(model: nn.Module) -> list[str]:
    """Candidate Grad-CAM layers, the recommended one first.

    CNNs: conv layers, last one first (the usual choice). Vision transformers: the recommended token layer
    (:attr:`nnlab.models.archinfo.ArchInfo.gradcam_layer`), the same place in earlier blocks, then the patch
    embedding.
    """
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][::-1]
    info = arch_info(model)
    if info.kind != "vit" or info.gradcam_layer is None:
        return convs
    block, _sep, leaf = info.gradcam_layer.rpartition(".") if info.gradcam_layer.endswith(("norm1", "ln_1")) \
        else (info.gradcam_layer, "", "")
    parent, _sep, _name = block.rpartition(".")
    names = dict(model.named_modules())
    earlier = [f"{parent}.{c}" + (f".{leaf}" if leaf else "") for c, _child in names[parent].named_children()][::-1] \
        if parent in names else []
    layers = [info.gradcam_layer] + [n for n in earlier if n in names and n != info.gradcam_layer]
    return layers + convs


_HEAT = np.array([[0, 0, 0], [120, 0, 30], [230, 60, 0], [255, 200, 40], [255, 255, 230]], dtype=np.float64) / 255


def heat_rgb(a: np.ndarray) -> np.ndarray:
    """Values in 0–1 to a black–red–yellow–white heat colour, ``…×3`` floats."""
    a = np.clip(np.asarray(a, dtype=np.float64), 0, 1) * (len(_HEAT) - 1)
    i = np.minimum(a.astype(int), len(_HEAT) - 2)
    f = (a - i)[..., None]
    return _HEAT[i] * (1 - f) + _HEAT[i + 1] * f


def render(values: np.ndarray, image: np.ndarray | None = None, style: str = "heat", alpha: float = 0.6,
           scale: int = 1) -> np.ndarray:
    """An attribution ``C×H×W`` as an ``H×W×3`` uint8 picture.

    Args:
        values: The map.
        image: ``H×W×3`` uint8 input to draw under a heat map (optional).
        style: "heat" (|attribution| summed over channels, 0 to max) or "signed" (3-channel maps as an
            RGB picture with mid grey at zero, as in Zeiler & Fergus; 1-channel maps blue–white–red).
        scale: Nearest-neighbour upscale factor.
    """
    v = np.nan_to_num(np.asarray(values, dtype=np.float64))
    if style == "signed":
        m = np.abs(v).max() or 1.0
        rgb = np.clip(0.5 + 0.5 * v.transpose(1, 2, 0) / m, 0, 1) if v.shape[0] == 3 else diverging_rgb(v.sum(0) / (np.abs(v.sum(0)).max() or 1.0))
    elif style == "heat":
        h = np.abs(v).sum(0)
        h = h / (h.max() or 1.0)
        rgb = heat_rgb(h)
        if image is not None:
            base = image.astype(np.float64).mean(2, keepdims=True).repeat(3, 2) / 255
            rgb = alpha * rgb + (1 - alpha) * base
    else:
        raise ValueError(f"style must be heat or signed, got {style!r}")
    out = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return np.ascontiguousarray(out)


# The columns of :func:`summary` for the reader (keys stay as they are; pages rename with _()).
SUMMARY_COLUMNS = {"method": N_("method"), "max |value|": N_("max |value|"), "sum |value|": N_("sum |value|"),
                   "positive share": N_("positive share"), "IG delta": N_("IG delta")}


def summary(a: Attribution) -> dict:
    """Numbers for one map: max |value|, total |value|, share of positive mass, IG delta."""
    v = a.values
    pos, neg = float(v[v > 0].sum()), float(-v[v < 0].sum())
    return {"method": _(METHODS[a.method]), "max |value|": float(np.abs(v).max()), "sum |value|": float(np.abs(v).sum()),
            "positive share": pos / (pos + neg) if pos + neg > 0 else float("nan"), "IG delta": a.delta}


def attribute_all(prep: Prepared, x: torch.Tensor, target: int, methods: list[str], ig_steps: int = 32,
                  layer: str | None = None, window: int = 3,
                  progress: Callable[[float, str], None] | None = None) -> list[Attribution]:
    """Several methods in a row, reporting progress after each."""
    out = []
    for i, meth in enumerate(methods):
        if progress:
            progress(i / len(methods), _(METHODS[meth]))
        out.append(attribute(prep, x, meth, target, ig_steps=ig_steps, layer=layer, window=window))
    if progress:
        progress(1.0, _("done"))
    return out
