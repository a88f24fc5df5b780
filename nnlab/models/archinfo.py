"""Architecture facts the pages need, read from a built model without running it.

:func:`arch_info` says which layers are convolutions (first, last), where the classifier is, whether the
model is a vision transformer (patch tokens, how many prefix tokens, the patch size), which layer
Grad-CAM should use and how its tokens become a map, and whether channel pruning applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnlab.i18n import _
from nnlab.models.checkpoints import head_names

CHANNEL_PRUNING_METHODS = ("prune-channels",)


@dataclass(frozen=True)
class TokenLayout:
    """How a transformer lays out its sequence: ``prefix`` tokens (class, distillation, registers), then one
    token per ``patch`` (``ph × pw`` pixels) in row-major order."""

    prefix: int
    patch: tuple[int, int]

    def grid(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """``(rows, cols)`` of patch tokens for an input of ``input_hw`` pixels."""
        return input_hw[0] // self.patch[0], input_hw[1] // self.patch[1]

    def matches(self, length: int, input_hw: tuple[int, int]) -> bool:
        gh, gw = self.grid(input_hw)
        return length == self.prefix + gh * gw

    def to_map(self, t: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        """``N×T×D`` tokens to the ``N×D×rows×cols`` map of the patch tokens (prefix tokens left out)."""
        gh, gw = self.grid(input_hw)
        if t.ndim != 3 or t.shape[1] != self.prefix + gh * gw:
            raise ValueError(_("expected N×{value}×D tokens, got {value2}").format(
                value=self.prefix + gh * gw, value2=tuple(t.shape)))
        return t[:, self.prefix:].reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class ArchInfo:
    """Facts about one model.

    Attributes:
        kind: "cnn" (convolutions throughout), "vit" (patch tokens through attention blocks) or "other"
            (e.g. attention on feature maps, no convolution at all).
        conv_layers: Names of the ``nn.Conv2d`` layers, in module order.
        first_conv: The first of them (the stem, or a ViT's patch embedding).
        last_conv: The last of them.
        classifier: Names of the classifier layer(s).
        attention: Names of the attention modules.
        tokens: The token layout of a vision transformer (None for other models).
        gradcam_layer: The layer Grad-CAM should use by default.
        gradcam_note: What that choice means (empty for the usual last conv layer).
        channel_pruning: Whether removing conv channels can work on this model.
        channel_pruning_reason: Why not (empty when it can).
    """

    kind: str
    conv_layers: tuple[str, ...]
    first_conv: str | None
    last_conv: str | None
    classifier: tuple[str, ...]
    attention: tuple[str, ...]
    tokens: TokenLayout | None
    gradcam_layer: str | None
    gradcam_note: str
    channel_pruning: bool
    channel_pruning_reason: str

    @property
    def is_token_model(self) -> bool:
        return self.tokens is not None

    def gradcam_reshape(self, input_hw: tuple[int, int]):
        """For a token model: a function ``N×T×D → N×D×rows×cols`` for Grad-CAM's layer output; else None."""
        if self.tokens is None:
            return None
        layout = self.tokens
        return lambda t: layout.to_map(t, input_hw)


def _is_attention(m: nn.Module) -> bool:
    if isinstance(m, nn.MultiheadAttention):
        return True
    name = type(m).__name__
    heads = any(isinstance(getattr(m, a, None), int) for a in ("num_heads", "n_heads", "heads"))
    return ("Attention" in name or "Attn" in name) and heads


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def token_layout(model: nn.Module) -> TokenLayout | None:
    """The token layout of a timm or torchvision vision transformer (class token + patch tokens), else None."""
    try:
        from torchvision.models import VisionTransformer as TvViT
    except Exception:  # pragma: no cover - torchvision is a dependency
        TvViT = ()
    if TvViT and isinstance(model, TvViT):
        return TokenLayout(1, _pair(model.patch_size))
    pe = getattr(model, "patch_embed", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    if pe is not None and isinstance(prefix, int) and hasattr(model, "blocks"):
        patch = getattr(pe, "patch_size", None)
        if patch is None and isinstance(getattr(pe, "proj", None), nn.Conv2d):
            patch = pe.proj.stride
        if patch is not None:
            return TokenLayout(prefix, _pair(patch))
    return None


def _vit_gradcam(model: nn.Module, tokens: TokenLayout) -> tuple[str | None, str]:
    names = dict(model.named_modules())
    pooled_by_token = tokens.prefix > 0 and getattr(model, "global_pool", "token") in ("token", "")
    last = None
    if isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)) and len(model.blocks):
        last = f"blocks.{len(model.blocks) - 1}"
        norm = f"{last}.norm1"
    elif hasattr(model, "encoder") and hasattr(model.encoder, "layers"):  # torchvision
        last = f"encoder.layers.{list(dict(model.encoder.layers.named_children()))[-1]}"
        norm = f"{last}.ln_1"
    if last is None:
        return None, "no transformer block found for Grad-CAM"
    if pooled_by_token and norm in names:
        return norm, (f"Grad-CAM on {norm}, the normalised input of the last block: the classifier reads only the "
                      "class token, so the last block's own patch tokens receive no gradient; here they still "
                      "reach the class token through attention. Patch tokens are laid out as their grid; the "
                      "class token is left out.")
    return last, (f"Grad-CAM on the last block ({last}); its patch tokens are laid out as their grid, prefix "
                  "tokens left out.")


def arch_info(model: nn.Module) -> ArchInfo:
    """Facts about ``model`` from its modules (nothing is run)."""
    convs = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    attention = tuple(n for n, m in model.named_modules() if n and _is_attention(m))
    tokens = token_layout(model)
    if tokens is not None:
        kind = "vit"
        gradcam, note = _vit_gradcam(model, tokens)
    else:
        kind = "cnn" if convs and not attention else "other"
        gradcam, note = (convs[-1] if convs else None), ""
        if attention and convs:
            note = _("the model mixes convolutions and attention; Grad-CAM uses its last conv layer")
    reason = ""
    if attention:
        reason = _("channel pruning cannot be applied to this model: its {n} attention layer(s) (first: {first}) "
                   "split their query/key/value channels into heads, and removing channels would break that split. "
                   "Use unstructured pruning, weight quantization or clustering instead.").format(
            n=len(attention), first=attention[0])
    elif not convs:
        reason = _("channel pruning removes conv filters, and this model has no Conv2d layer")
    return ArchInfo(kind=kind, conv_layers=convs, first_conv=convs[0] if convs else None,
                    last_conv=convs[-1] if convs else None, classifier=tuple(head_names(model)),
                    attention=attention, tokens=tokens, gradcam_layer=gradcam, gradcam_note=note,
                    channel_pruning=not reason, channel_pruning_reason=reason)


def check_method(model: nn.Module, cfg) -> None:
    """Raise ``ValueError`` saying why a compression method cannot work on ``model`` (channel pruning through
    attention, or on a model without convolutions); return quietly otherwise.

    Args:
        cfg: A compression config (its ``method`` and, for iterative pruning, ``structure`` are read).
    """
    method = getattr(cfg, "method", str(cfg))
    channels = method in CHANNEL_PRUNING_METHODS or (method == "prune-iterative"
                                                     and getattr(cfg, "structure", "") == "channels")
    if channels:
        info = arch_info(model)
        if not info.channel_pruning:
            raise ValueError(info.channel_pruning_reason)
