"""First-click defaults of the compression lab: for every registered method, the settings a first click runs and
the accuracy drop they are expected to stay within on the demo model, with the reason.

A config's own defaults (``compression.registry``) are the textbook settings a CLI user types around; a first
click in the lab should instead *work*: compress visibly, keep the accuracy, and answer in about a minute on
two CPU cores. Where the two differ, :data:`FIRST_CLICK` holds the lab's overrides. The promised drops were
measured on the demo CNN on Fashion-MNIST and on digits (``bench/bench_first_click.py``) and are checked on
digits by ``tests/test_first_click.py`` through the lab's own job; every registered method must have an entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from compression.registry import MethodConfig, get_method
from nnlab.i18n import N_, _, num


@dataclass(frozen=True)
class FirstClick:
    """What the lab's first click runs for one method.

    Attributes:
        overrides: Config fields that differ from the config's own defaults.
        max_drop: Accuracy drop (fraction, 0.01 = 1 point) the default is expected to stay within on the
            demo model.
        why: One or two sentences for the page: why this setting (marked with ``N_``; :func:`promise` translates).
        min_samples: For methods that train: at least this many training samples are seen in all (the
            ``epochs_field`` is raised on small datasets, where a few epochs are only a few hundred steps).
        epochs_field: The config field counting epochs.
    """

    overrides: dict[str, Any] = field(default_factory=dict)
    max_drop: float = 0.01
    why: str = ""
    min_samples: int = 0
    epochs_field: str = "epochs"


FIRST_CLICK: dict[str, FirstClick] = {
    "prune-unstructured": FirstClick(
        {"scope": "global"}, 0.01,
        N_("Half the weights, chosen by one magnitude threshold over all layers: it removes the weights that matter "
        "least wherever they are. The same 50 % in every layer cuts the small first convolution as hard as the "
        "big layers: without fine-tuning the Fashion-MNIST demo lost 12 to 25 points that way (92.60 % to "
        "80.45 %, and 92.45 % to 67.33 % in another training) and none with one global threshold.")),
    "prune-channels": FirstClick(
        {"amount": 0.25, "finetune_epochs": 1}, 0.02,
        N_("A quarter of the MACs, then one fine-tuning epoch. Removing whole filters changes what the next layer "
        "receives: on the Fashion-MNIST demo a quarter cost 3.5 points and half 8.8 points before fine-tuning; "
        "one epoch brings a quarter back within 0.2 points.")),
    "prune-iterative": FirstClick(
        {"rounds": 2, "epochs": 1}, 0.01,
        N_("Two rounds of 30 % with one fine-tuning epoch each (about 51 % sparsity): the accuracy stayed level on "
        "the Fashion-MNIST demo; more rounds reach higher sparsity, one epoch each.")),
    "cluster": FirstClick(
        {"k": 32}, 0.01,
        N_("32 shared values per layer (5-bit indices) keep the weights close enough without fine-tuning: 0.2 "
        "points on the Fashion-MNIST demo, where k = 16 lost 2.9 points (it needs a centroid fine-tuning "
        "epoch).")),
    "distill": FirstClick(
        {"epochs": 3}, 0.04,
        N_("A student a quarter as wide (about 16x fewer weights) trained on the teacher's soft targets for 3 "
        "epochs, more on small datasets (at least 40,000 samples seen): 2.7 points below the Fashion-MNIST demo; "
        "more epochs close most of the gap."), min_samples=40000),
    "quantize-weights": FirstClick(
        {}, 0.005,
        N_("8-bit weights with one scale per output channel round each weight by at most half a step: 4x smaller "
        "weights at no measurable loss (4 bits everywhere lost 1.2 points on the Fashion-MNIST demo: choose "
        "per-layer bits with the sensitivity analysis below).")),
    "int8": FirstClick(
        {}, 0.01,
        N_("Static int8 in ONNX Runtime with per-channel weights and min/max activation ranges from 256 training "
        "images: real int8 kernels, 4x smaller; no loss on the Fashion-MNIST demo.")),
    "qat": FirstClick(
        {"epochs": 1, "train_samples": 20000}, 0.01,
        N_("One epoch on 20,000 training images with fake quantization lets the weights adapt to int8 before the "
        "conversion: 0.1 points on the Fashion-MNIST demo in two minutes (the config's 2 epochs on all 60,000 "
        "gained 0.4 points in six times as long).")),
    "half": FirstClick(
        {}, 0.002,
        N_("fp16 keeps 11 significant bits: the logits move by about 1e-3 and predictions almost never change "
        "(0.01 points on the Fashion-MNIST demo).")),
}


def first_click(method: str) -> FirstClick:
    """The lab's first-click settings and promise for ``method`` (KeyError when it has none)."""
    return FIRST_CLICK[method]


MAX_EPOCHS = 30


def overrides(method: str, n_train: int | None = None) -> dict[str, Any]:
    """Config fields the lab's first click sets differently from the config's own defaults ({} when none).

    ``n_train``: training-set size; methods with ``min_samples`` get more epochs on small sets.
    """
    fc = FIRST_CLICK.get(method)
    if fc is None:
        return {}
    out = dict(fc.overrides)
    if fc.min_samples and n_train:
        cls = get_method(method)
        base = out.get(fc.epochs_field, next(f.default for f in cls.fields_info() if f.name == fc.epochs_field))
        out[fc.epochs_field] = int(min(MAX_EPOCHS, max(int(base), math.ceil(fc.min_samples / n_train))))
    return out


def default_config(method: str, n_train: int | None = None) -> MethodConfig:
    """The config a first click in the lab runs for ``method`` (on a training set of ``n_train`` samples)."""
    return get_method(method).from_dict(overrides(method, n_train))


def promise(method: str) -> str:
    """One line for the page: the drop the first click is expected to stay within, and why that setting."""
    fc = FIRST_CLICK.get(method)
    if fc is None:
        return ""
    return _("First click: expected accuracy drop at most {points} points on the demo model. {why}").format(
        points=num(100 * fc.max_drop, "g"), why=_(fc.why) if fc.why else "")
