"""Why a variant lost accuracy, and what it forgot: the diagnosis of a compressed variant against its base.

- :func:`layer_errors` — per layer, the error of the variant's layer when it gets the base's input to that layer
  (*local*: what this layer's compression costs by itself), and the error of the variant's output at that layer
  when both networks see the same image (*accumulated* along the depth); relative L2 error and SQNR.
- :func:`recovery` — for chosen layers, accuracy and agreement with the base when only that layer is put back
  (the base's float module in place of the variant's), as NNCF's accuracy control and AIMET's QuantAnalyzer
  rank layers.
- :func:`flips` — the samples whose prediction changed, both directions, with a per-class flip matrix: flips
  happen even when accuracy does not move.
- :func:`forgotten` — over several variants of one base, the samples whose modal prediction across the
  variants differs from the base's (Hooker et al. 2019, "What do compressed deep neural networks forget?":
  pruning-identified exemplars, PIEs), their share among suspected label errors and low-confidence base
  predictions, and accuracy on them against the rest.

All of it works on PyTorch models (the variant's eager model, e.g. fake-quantised or pruned weights) and on
stored predictions; models are never changed (hooks go on private copies).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from diagnostics.hooks import forward_hooks
from nnlab.i18n import _

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    noise = float(((ref.double() - test.double()) ** 2).sum())
    signal = float((ref.double() ** 2).sum())
    if noise == 0:
        return float("inf")
    return 10.0 * math.log10(signal / noise) if signal > 0 else float("-inf")


def _rel(ref: torch.Tensor, test: torch.Tensor) -> float:
    denom = float(ref.double().norm())
    diff = float((ref.double() - test.double()).norm())
    return diff / denom if denom > 0 else (0.0 if diff == 0 else float("inf"))


@dataclass
class LayerError:
    """The error one layer adds (local) and carries (accumulated), against the base.

    Attributes:
        name: Layer name (as in ``named_modules``).
        type: Module class of the base's layer.
        depth: Position in the base's forward order (0 first).
        local_rel: ``‖f_v(x_b) − f_b(x_b)‖ / ‖f_b(x_b)‖``: the variant's layer fed the base's input.
        local_sqnr_db: SQNR of the same (dB; inf when equal).
        accumulated_rel: ``‖y_v − y_b‖ / ‖y_b‖`` at this layer's output, both networks fed the same images.
        accumulated_sqnr_db: SQNR of the same.
        note: Why a value is missing (e.g. shapes differ after channel pruning).
    """

    name: str
    type: str
    depth: int
    local_rel: float
    local_sqnr_db: float
    accumulated_rel: float
    accumulated_sqnr_db: float
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def weighted_layers(model: nn.Module) -> list[str]:
    """Names of the Conv/Linear layers (where compression acts)."""
    return [n for n, m in model.named_modules() if n and isinstance(m, WEIGHTED)]


def layer_errors(base: nn.Module, variant: nn.Module, x: torch.Tensor,
                 layers: list[str] | None = None) -> list[LayerError]:
    """Per-layer local and accumulated error of ``variant`` against ``base`` on the inputs ``x``.

    Args:
        base: The float model.
        variant: The compressed model with the same layer names (its eager PyTorch form).
        x: Normalised inputs ``N×C×H×W`` (one batch).
        layers: Layer names (default: the base's Conv/Linear layers present in the variant).

    Returns:
        One :class:`LayerError` per layer, in the base's forward order.
    """
    b, v = copy.deepcopy(base).eval(), copy.deepcopy(variant).eval()
    v_mods = dict(v.named_modules())
    names = layers if layers is not None else [n for n in weighted_layers(b) if n in v_mods]
    b_in: dict[str, tuple] = {}
    b_out: dict[str, torch.Tensor] = {}
    v_out: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def keep_base(name: str):
        def fn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name not in b_out:
                order.append(name)
            b_in[name] = tuple(i.detach().clone() if isinstance(i, torch.Tensor) else i for i in inputs)
            b_out[name] = output.detach().float().clone()
        return fn

    def keep_variant(name: str):
        def fn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            out = output.dequantize() if getattr(output, "is_quantized", False) else output
            v_out[name] = out.detach().float().clone()
        return fn

    with torch.no_grad():
        with forward_hooks(b, {n: keep_base(n) for n in names}):
            b(x)
        with forward_hooks(v, {n: keep_variant(n) for n in names if n in v_mods}):
            v(x)
        rows = []
        for depth, name in enumerate(order):
            ref = b_out[name]
            note = ""
            local_rel = local_db = acc_rel = acc_db = float("nan")
            try:
                local = v_mods[name](*b_in[name]).float()
                if local.shape == ref.shape:
                    local_rel, local_db = _rel(ref, local), _sqnr_db(ref, local)
                else:
                    note = _("output shape {shape} against the base's {base}").format(
                        shape=tuple(local.shape[1:]), base=tuple(ref.shape[1:]))
            except (RuntimeError, KeyError) as exc:  # e.g. pruned input channels: the base's input does not fit
                note = _("the variant's layer cannot take the base's input ({error})").format(error=str(exc)[:80])
            if name in v_out and v_out[name].shape == ref.shape:
                acc_rel, acc_db = _rel(ref, v_out[name]), _sqnr_db(ref, v_out[name])
            rows.append(LayerError(name, type(dict(b.named_modules())[name]).__name__, depth, local_rel, local_db,
                                   acc_rel, acc_db, note))
    return rows


def put_back(base: nn.Module, variant: nn.Module, layers: list[str]) -> nn.Module:
    """A copy of ``variant`` with the base's float modules in place of ``layers`` (both models unchanged)."""
    out = copy.deepcopy(variant)
    b_mods = dict(base.named_modules())
    for name in layers:
        parent, _sep, child = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, copy.deepcopy(b_mods[name]))
    return out.eval()


@dataclass
class Recovery:
    """Accuracy when one layer (or a set) is put back into the variant."""

    layers: list[str]
    accuracy: float
    agreement: float
    recovered: float  # fraction of the variant's drop recovered: (acc − acc_variant) / (acc_base − acc_variant)

    def to_dict(self) -> dict:
        return asdict(self)


def _preds(model: nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()


def recovery(base: nn.Module, variant: nn.Module, x: torch.Tensor, y: np.ndarray,
             candidates: list[list[str]]) -> tuple[float, float, list[Recovery]]:
    """Accuracy and agreement with the base of the variant with each candidate set of layers put back.

    Returns:
        ``(base accuracy, variant accuracy, one Recovery per candidate, best first)``.
    """
    b = copy.deepcopy(base).eval()
    y = np.asarray(y)
    pb = _preds(b, x)
    acc_b = float((pb == y).mean())
    acc_v = float((_preds(copy.deepcopy(variant).eval(), x) == y).mean())
    drop = acc_b - acc_v
    out = []
    for layers in candidates:
        p = _preds(put_back(b, variant, layers), x)
        acc = float((p == y).mean())
        out.append(Recovery(list(layers), acc, float((p == pb).mean()),
                            (acc - acc_v) / drop if drop > 0 else float("nan")))
    out.sort(key=lambda r: (-r.accuracy, -r.agreement))
    return acc_b, acc_v, out


def restore_until(base: nn.Module, variant: nn.Module, x: torch.Tensor, y: np.ndarray, ranking: list[str],
                  budget: float) -> tuple[list[str], float, float]:
    """Put layers back in ``ranking`` order until the variant's accuracy on ``x``, ``y`` is within ``budget``
    (a fraction, 0.005 = half a point) of the base's; ``([] , ...)`` when it already is.

    Returns:
        ``(layers put back, base accuracy, accuracy with them back)``.
    """
    y = np.asarray(y)
    acc_b = float((_preds(copy.deepcopy(base).eval(), x) == y).mean())
    chosen: list[str] = []
    acc = float((_preds(copy.deepcopy(variant).eval(), x) == y).mean())
    for name in ranking:
        if acc_b - acc <= budget:
            break
        chosen.append(name)
        acc = float((_preds(put_back(base, variant, chosen), x) == y).mean())
    return chosen, acc_b, acc


@dataclass
class Flips:
    """How predictions changed from the base to a variant (same samples, same order)."""

    changed: int
    right_to_wrong: int
    wrong_to_right: int
    wrong_to_wrong: int
    base_accuracy: float
    variant_accuracy: float
    indices: np.ndarray  # the changed samples
    matrix: np.ndarray  # K×K: base prediction (rows) → variant prediction (columns), changed samples only

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("indices")
        d["matrix"] = self.matrix.tolist()
        return d


def flips(base_preds: np.ndarray, variant_preds: np.ndarray, labels: np.ndarray, num_classes: int) -> Flips:
    """The samples whose predicted class changed, both directions, and the per-class flip matrix."""
    pb, pv, y = (np.asarray(a, np.int64) for a in (base_preds, variant_preds, labels))
    if not (len(pb) == len(pv) == len(y)):
        raise ValueError("base, variant and labels must cover the same samples")
    idx = np.flatnonzero(pb != pv)
    rb, rv = pb[idx] == y[idx], pv[idx] == y[idx]
    mat = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(mat, (pb[idx], pv[idx]), 1)
    return Flips(int(len(idx)), int((rb & ~rv).sum()), int((~rb & rv).sum()), int((~rb & ~rv).sum()),
                 float((pb == y).mean()) if len(y) else float("nan"),
                 float((pv == y).mean()) if len(y) else float("nan"), idx, mat)


def attribution_pairs(base: nn.Module, variant: nn.Module, x: torch.Tensor, targets: list[int],
                      method: str = "integrated_gradients", layer: str | None = None) -> list[dict]:
    """Base and variant attributions for the same target, per sample, with their Spearman rank correlation.

    Args:
        x: Normalised inputs ``N×C×H×W``.
        targets: The class to explain per sample (e.g. the base's prediction, so both explain the same thing).
        method: A method of :mod:`diagnostics.attributions` ("integrated_gradients", "gradcam" …).
        layer: The Grad-CAM layer (default: the last one the attribution module suggests).

    Returns:
        Per sample: ``base`` and ``variant`` maps (``C×H×W`` arrays) and ``similarity`` (Spearman's ρ of the two
        maps' |values| summed over channels; 1 = the same ranking of pixels).
    """
    from scipy.stats import spearmanr

    from diagnostics import attributions as attr

    pb, pv = attr.prepare(base, x[:1]), attr.prepare(variant, x[:1])
    if method in attr.NEEDS_LAYER and layer is None:
        layer = attr.gradcam_layers(pb.model)[0]  # the recommended one
    out = []
    for i, t in enumerate(targets):
        a = attr.attribute(pb, x[i:i + 1], method, int(t), layer=layer).values
        b = attr.attribute(pv, x[i:i + 1], method, int(t), layer=layer).values
        ha, hb = np.abs(a).sum(0).ravel(), np.abs(b).sum(0).ravel()
        rho = float(spearmanr(ha, hb).statistic) if ha.std() > 0 and hb.std() > 0 else float("nan")
        out.append({"base": a, "variant": b, "similarity": rho, "target": int(t)})
    return out


def modal(preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Per sample, the most frequent class across the rows of ``preds`` (V×N); ties go to the lower class."""
    preds = np.asarray(preds, np.int64)
    counts = np.zeros((preds.shape[1], num_classes), np.int64)
    for row in preds:
        counts[np.arange(preds.shape[1]), row] += 1
    return counts.argmax(1)


def forgotten(base_preds: np.ndarray, variant_preds: list[np.ndarray] | np.ndarray, labels: np.ndarray,
              num_classes: int, suspected: np.ndarray | None = None, base_confidence: np.ndarray | None = None,
              low_confidence: float = 0.5) -> dict:
    """Hooker et al.'s PIEs over several variants of one base: modal variant prediction ≠ base prediction.

    Args:
        base_preds: The base's predicted classes (N).
        variant_preds: One array of predictions per variant (V×N).
        labels: True classes (N).
        num_classes: K.
        suspected: Boolean mask of suspected label errors (e.g. the label check's), or None.
        base_confidence: The base's top-1 probability per sample, or None.
        low_confidence: Below this the base's prediction counts as low-confidence.

    Returns:
        ``mask`` (PIEs), ``count``, ``share``; accuracy of the base and of the variants (mean) on PIEs and on
        the rest; and where given, the PIEs' share among suspected label errors against the base rate
        (``pie_rate_suspected`` vs ``pie_rate``) and among low-confidence predictions.
    """
    pb, y = np.asarray(base_preds, np.int64), np.asarray(labels, np.int64)
    pv = np.asarray(variant_preds, np.int64)
    if pv.ndim != 2 or pv.shape[1] != len(pb):
        raise ValueError("variant_preds must be V×N with N the number of samples")
    mask = modal(pv, num_classes) != pb
    rest = ~mask

    def acc(p: np.ndarray, m: np.ndarray) -> float:
        return float((p[m] == y[m]).mean()) if m.any() else float("nan")

    out = {"mask": mask, "count": int(mask.sum()), "share": float(mask.mean()) if len(mask) else float("nan"),
           "variants": int(pv.shape[0]), "pie_rate": float(mask.mean()) if len(mask) else float("nan"),
           "base_accuracy_pie": acc(pb, mask), "base_accuracy_rest": acc(pb, rest),
           "variant_accuracy_pie": float(np.nanmean([acc(p, mask) for p in pv])) if mask.any() else float("nan"),
           "variant_accuracy_rest": float(np.nanmean([acc(p, rest) for p in pv])) if rest.any() else float("nan")}
    if suspected is not None:
        s = np.asarray(suspected, bool)
        out["pie_rate_suspected"] = float(mask[s].mean()) if s.any() else float("nan")
        out["suspected_among_pies"] = float(s[mask].mean()) if mask.any() else float("nan")
        out["suspected_rate"] = float(s.mean())
    if base_confidence is not None:
        low = np.asarray(base_confidence) < low_confidence
        out["pie_rate_low_confidence"] = float(mask[low].mean()) if low.any() else float("nan")
        out["low_confidence_among_pies"] = float(low[mask].mean()) if mask.any() else float("nan")
    return out
