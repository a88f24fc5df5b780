"""Weight clustering (seed 001; Han et al., Deep Compression): k shared values per layer.

Each Conv/Linear weight tensor is clustered by 1-D k-means (scikit-learn's ``KMeans``, one run from the
chosen initialisation) and every weight is replaced by its centroid, so the layer holds exactly k distinct
values and stores as k floats plus ⌈log2 k⌉-bit indices. Zeros left by pruning stay zeros and out of the
clusters. Optional fine-tuning trains the centroids only through the shared assignment (the gradient of a
centroid is the sum of its members' gradients) with ``torch.nn.utils.parametrize``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn
from torch.nn.utils import parametrize

from compression.packing import index_bits
from compression.pruning import TARGETS, finetune, prunable_layers
from compression.registry import CompressContext, CompressResult, MethodConfig, check_choice, check_range, register
from nnlab.i18n import N_, _

INITS = ("linear", "kmeans++", "density")
MAX_FIT_SAMPLES = 200_000


def initial_centroids(values: np.ndarray, k: int, init: str) -> np.ndarray:
    """Seed 001's three initialisations for 1-D k-means.

    - linear: k points evenly spaced between min and max of the weights;
    - density: k points evenly spaced on the weights' CDF (quantiles (i + ½)/k);
    - kmeans++: left to scikit-learn (returns an empty array).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if init == "linear":
        return np.linspace(v.min(), v.max(), k)
    if init == "density":
        return np.quantile(v, (np.arange(k) + 0.5) / k)
    return np.empty(0)


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", seed: int = 0,
              max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D ``values`` into ``k`` groups; returns ``(centroids (k,), labels (n,))``.

    Uses scikit-learn's ``KMeans`` (``n_init=1``) from :func:`initial_centroids`; above 200 000 values it is
    fitted on a fixed random sample and every value is then assigned to its nearest centroid.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    distinct = np.unique(v)
    if len(distinct) <= k:  # nothing to merge: each distinct value is its own cluster
        return distinct.astype(np.float64), np.searchsorted(distinct, v[:, 0])
    init_arg = "k-means++" if init == "kmeans++" else initial_centroids(v, k, init).reshape(-1, 1)
    fit_on = v
    if len(v) > MAX_FIT_SAMPLES:
        fit_on = v[np.random.default_rng(seed).choice(len(v), MAX_FIT_SAMPLES, replace=False)]
    km = KMeans(n_clusters=k, init=init_arg, n_init=1, max_iter=max_iter, random_state=seed).fit(fit_on)
    centroids = km.cluster_centers_[:, 0]
    labels = km.labels_ if fit_on is v else km.predict(v)
    return centroids, labels


class _Shared(nn.Module):
    """Parametrization ``W = c[idx]`` (masked): the stored parameter is the centroid vector ``c``."""

    def __init__(self, idx: torch.Tensor, mask: torch.Tensor, centroids: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("idx", idx)
        self.register_buffer("mask", mask)
        self._init = centroids

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return c[self.idx] * self.mask

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return self._init.to(w.device, w.dtype)


def cluster_layer(w: torch.Tensor, k: int, init: str, keep_zeros: bool, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Clustered copy of ``w`` plus facts (k, distinct values, index bits, centroids, labels)."""
    flat = w.detach().cpu().double().reshape(-1).numpy()
    mask = flat != 0 if keep_zeros and (flat == 0).any() else np.ones(flat.shape, bool)
    centroids, labels = kmeans_1d(flat[mask], k, init, seed)
    c32 = centroids.astype(np.float32)
    out = np.zeros(flat.shape, np.float32)
    out[mask] = c32[labels]
    full_idx = np.zeros(flat.shape, np.int64)
    full_idx[mask] = labels
    info = {"clusters": int(len(np.unique(out[mask]))), "k": int(k), "index_bits": index_bits(len(c32)),
            "zeros_kept": bool((~mask).any()), "centroids": c32, "idx": full_idx.reshape(w.shape),
            "mask": mask.reshape(w.shape)}
    return torch.from_numpy(out.reshape(w.shape)).to(w.dtype), info


@dataclass(frozen=True)
class ClusterConfig(MethodConfig):
    """k-means weight sharing per layer."""

    method: ClassVar[str] = "cluster"
    label: ClassVar[str] = N_("Weight clustering (k-means)")
    family: ClassVar[str] = "clustering"
    description: ClassVar[str] = (N_("Replace each layer's weights by k shared values (k-means centroids); stored "
                                  "as k floats plus ⌈log2 k⌉-bit indices."))

    k: int = field(default=16, metadata={"help": N_("Clusters per layer (2–256)"), "min": 2, "max": 256,
                                         "formula": r"\text{bits/weight} = \lceil\log_2 k\rceil"})
    init: str = field(default="linear", metadata={"help": N_("Centroid initialisation: linear, k-means++ or density"),
                                                  "choices": INITS})
    targets: str = field(default="conv+linear", metadata={"help": N_("Which layers are clustered"), "choices": TARGETS})
    keep_zeros: bool = field(default=True, metadata={"help": N_("Keep pruned zeros as zeros, outside the clusters")})
    finetune_epochs: int = field(default=0, metadata={"help": N_("Epochs of centroid fine-tuning (0 = none)"),
                                                      "min": 0, "max": 50})
    lr: float = field(default=1e-4, metadata={"help": N_("Centroid fine-tuning learning rate"),
                                              "min": 1e-7, "max": 1.0})

    def __post_init__(self) -> None:
        check_range(self, "k", 2, 256)
        if isinstance(self.k, float):
            raise ValueError(_("{method}: k must be an integer, got {k!r}").format(method=self.method, k=self.k))
        check_choice(self, "init", INITS)
        check_choice(self, "targets", TARGETS)
        check_range(self, "finetune_epochs", 0, 50)
        check_range(self, "lr", 1e-7, 1.0)


@register(ClusterConfig)
def cluster(model: nn.Module, cfg: ClusterConfig, ctx: CompressContext) -> CompressResult:
    layers = prunable_layers(model, cfg.targets)
    smallest = min(layers, key=lambda item: item[1].weight.numel(), default=None)
    if smallest is not None and cfg.k > smallest[1].weight.numel():
        raise ValueError(_("{method}: k={k} is more than the {n} weights of layer {layer}; choose k ≤ {n} "
                           "or other target layers").format(
            method=cfg.method, k=cfg.k, n=smallest[1].weight.numel(), layer=smallest[0]))
    rows, infos = [], {}
    for i, (name, mod) in enumerate(layers):
        ctx.check_cancel()
        ctx.report(_("k-means on {name}").format(name=name),
                   0.5 * i / max(1, len(layers)) if cfg.finetune_epochs else i / len(layers))
        new_w, info = cluster_layer(mod.weight, cfg.k, cfg.init, cfg.keep_zeros, ctx.seed)
        with torch.no_grad():
            mod.weight.copy_(new_w)
        infos[name] = info
    if cfg.finetune_epochs:
        finetune_centroids(model, layers, infos, ctx, cfg.finetune_epochs, cfg.lr)
    for name, mod in layers:
        w = mod.weight.detach()
        nz = w[w != 0] if infos[name]["zeros_kept"] else w.reshape(-1)
        rows.append({"name": name, "clusters": int(torch.unique(nz).numel()), "k": cfg.k,
                     "index_bits": infos[name]["index_bits"], "zeros_kept": infos[name]["zeros_kept"]})
    ctx.report(_("clustered"), 1.0)
    return CompressResult(model=model, layers=rows, extra={"k": cfg.k, "init": cfg.init})


def finetune_centroids(model: nn.Module, layers: list[tuple[str, nn.Module]], infos: dict, ctx: CompressContext,
                       epochs: int, lr: float) -> None:
    """Train the centroids through the fixed assignment; the weights stay exactly k-valued."""
    try:
        for name, mod in layers:
            info = infos[name]
            p = _Shared(torch.from_numpy(info["idx"]), torch.from_numpy(info["mask"]).float(),
                        torch.from_numpy(info["centroids"]))
            parametrize.register_parametrization(mod, "weight", p, unsafe=True)
        finetune(model, ctx, epochs, lr, start=0.5, label="centroid fine-tuning")
    finally:
        for _, mod in layers:
            if parametrize.is_parametrized(mod, "weight"):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
