"""Pruning: unstructured magnitude masks, filter/channel removal, and iterative prune + fine-tune rounds.

- Unstructured: ``torch.nn.utils.prune`` L1 masks per layer or global, made permanent (zeros stay zeros).
- Channels: whole filters with the smallest L1/L2 norm removed through Torch-Pruning's dependency graph,
  so coupled layers (BatchNorm, the next conv, the flattened classifier) shrink with them and MACs fall.
  Channel counts can be kept multiples of the CPU's SIMD width (``round_to``). The pruned model runs in the
  fastest fp32 runtime verified against PyTorch on this machine (:func:`nnlab.runtimes.select.fastest_fp32_runner`),
  and the unpruned one is timed beside it in that same runtime, so the record reports the MACs ratio beside
  a latency ratio that means something.
- Iterative (seed 000, Algorithm 1): ``for i in 1..N: S ← saliency(W'); W' ← W' − select_min_k(S);
  W' ← fine_tune(X, W')``, stopping at an accuracy floor or a budget; optional L1 or group-norm penalty
  in the fine-tuning loss (seed 002: "the same norm is added to the loss with some weight"), and
  lottery-ticket style weight rewinding.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from compression.registry import (
    CompressContext,
    CompressResult,
    MethodConfig,
    check_choice,
    check_range,
    register,
)
from nnlab.i18n import N_, _
from nnlab.measure import count_macs, count_parameters, interleaved_latency
from nnlab.runtimes.base import simd_width
from nnlab.runtimes.select import FP32_CANDIDATES, fastest_fp32_runner, fp32_factories
from nnlab.train import Progress, TrainConfig, cross_entropy_loss, quick_eval, train_model

TARGETS = ("conv+linear", "conv", "linear")
PRUNE_RUNTIMES = ("fastest", *FP32_CANDIDATES)


# --- helpers ------------------------------------------------------------------------------------------

def prunable_layers(model: nn.Module, targets: str = "conv+linear") -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the Conv/Linear layers whose weights are pruned."""
    kinds: tuple[type, ...] = {"conv": (nn.modules.conv._ConvNd,), "linear": (nn.Linear,),
                               "conv+linear": (nn.modules.conv._ConvNd, nn.Linear)}[targets]
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and getattr(m, "weight", None) is not None]


def weight_masks(model: nn.Module, targets: str = "conv+linear") -> dict[str, torch.Tensor]:
    """Boolean masks of the nonzero weights of each prunable layer."""
    return {n: (m.weight.detach() != 0) for n, m in prunable_layers(model, targets)}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights again (after an optimiser step)."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for n, mask in masks.items():
            w = mods[n].weight
            w.mul_(mask.to(w.device, w.dtype))


def sparsity_rows(model: nn.Module, targets: str = "conv+linear") -> list[dict]:
    """Per-layer weight sparsity."""
    rows = []
    for n, m in prunable_layers(model, targets):
        w = m.weight.detach()
        rows.append({"name": n, "weight_sparsity": 1.0 - int(torch.count_nonzero(w)) / w.numel()})
    return rows


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "layer", targets: str = "conv+linear") -> None:
    """L1 magnitude pruning in place with ``torch.nn.utils.prune``, masks made permanent.

    Args:
        model: Edited in place.
        sparsity: Fraction of weights set to zero (per layer, or over all layers together when global).
        scope: "layer" (``l1_unstructured`` each layer) or "global" (``global_unstructured``).
        targets: Which layers: "conv+linear", "conv" or "linear".
    """
    layers = prunable_layers(model, targets)
    if not layers or sparsity <= 0:
        return
    if scope == "global":
        prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured,
                                  amount=float(sparsity))
    else:
        for _, m in layers:
            prune.l1_unstructured(m, "weight", amount=float(sparsity))
    for _, m in layers:
        prune.remove(m, "weight")


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The output layer(s): Linear/Conv modules producing ``num_classes`` outputs (never pruned by channel)."""
    out = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return out[-1:] if out else []


def penalty_fn(kind: str, weight: float) -> Callable[[nn.Module], torch.Tensor] | None:
    """Sparsity-inducing penalty (seed 002): ``λ·Σ|w|`` (L1) or ``λ·Σ_filters ‖W_f‖₂`` (group norm)."""
    if kind == "none" or weight <= 0:
        return None

    def pen(model: nn.Module) -> torch.Tensor:
        total = torch.zeros((), device=next(model.parameters()).device)
        for _name, m in prunable_layers(model):
            w = m.weight
            if kind == "l1":
                total = total + w.abs().sum()
            else:
                total = total + w.reshape(w.shape[0], -1).norm(dim=1).sum()
        return weight * total

    return pen


def finetune(model: nn.Module, ctx: CompressContext, epochs: int, lr: float, masks: dict | None = None,
             penalty: Callable[[nn.Module], torch.Tensor] | None = None, indices: np.ndarray | None = None,
             start: float = 0.0, end: float = 1.0, label: str = "fine-tuning") -> list[dict]:
    """Fine-tune in place with ``nnlab.train.train_model``; masks re-applied after every step."""
    if epochs <= 0:
        return []
    n = len(indices) if indices is not None else len(ctx.data.y_train)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size_for(n, epochs), seed=ctx.seed, eval_test=False)

    def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = cross_entropy_loss(m, x, y)
        return loss + penalty(m) if penalty is not None else loss

    def prog(p: Progress) -> None:
        ctx.report(f"{label}: {p.message}", start + (end - start) * p.fraction)

    hist = train_model(model, ctx.data, cfg, indices=indices, loss_fn=loss_fn,
                       after_step=(lambda m: apply_masks(m, masks)) if masks else None, progress=prog,
                       cancel=ctx.cancel, device=torch.device(ctx.device) if isinstance(ctx.device, str) else ctx.device)
    model.cpu()
    return [h.to_dict() for h in hist]


def batch_size_for(n: int, epochs: int) -> int:
    """128 (large sets) or 64, halved until the run has at least 8 steps (the one-cycle schedule needs them)."""
    bs = 128 if n >= 5000 else 64
    while bs > 4 and -(-n // bs) * epochs < 8:
        bs //= 2
    return bs


def split_train(n: int, seed: int = 0, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Fixed split of the train indices into fine-tuning and validation parts (the test split stays unseen)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(min(n // 2, 200), int(n * fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# --- unstructured -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PruneUnstructuredConfig(MethodConfig):
    """Magnitude pruning of individual weights."""

    method: ClassVar[str] = "prune-unstructured"
    label: ClassVar[str] = N_("Pruning: weights by magnitude (unstructured)")
    family: ClassVar[str] = "pruning"
    description: ClassVar[str] = (N_("Zero the weights with the smallest |w| (torch.nn.utils.prune masks, made "
                                  "permanent). Shrinks the packed artifact; dense kernels do not run faster."))

    sparsity: float = field(default=0.5, metadata={"help": N_("Fraction of weights set to zero (0–0.99)"),
                                                   "min": 0.0, "max": 0.99, "formula": r"|\{w=0\}| / |W|"})
    scope: str = field(default="layer", metadata={"help": N_("layer: same sparsity in each layer; global: one "
                                                          "threshold over all layers"), "choices": ("layer", "global")})
    targets: str = field(default="conv+linear", metadata={"help": N_("Which layers are pruned"), "choices": TARGETS})
    finetune_epochs: int = field(default=0, metadata={"help": N_("Fine-tuning epochs after pruning (masks kept)"),
                                                      "min": 0, "max": 50})
    lr: float = field(default=1e-3, metadata={"help": N_("Fine-tuning learning rate"), "min": 1e-6, "max": 1.0})
    per_layer: str = field(default="", metadata={"help": N_("Per-layer sparsities 'name=level,...' (e.g. from the "
                                                         "sensitivity analysis); other layers use `sparsity`")})

    def __post_init__(self) -> None:
        check_range(self, "sparsity", 0.0, 0.99)
        check_choice(self, "scope", ("layer", "global"))
        check_choice(self, "targets", TARGETS)
        check_range(self, "finetune_epochs", 0, 50)
        check_range(self, "lr", 1e-6, 1.0)
        levels = parse_levels(self.per_layer, self.method)
        if levels and self.scope == "global":
            raise ValueError(_("{method}: per_layer sparsities need scope='layer'").format(method=self.method))


def parse_levels(text: str, method: str = "per_layer") -> dict[str, float]:
    """Parse ``"features.0=0.3, classifier.2=0.9"`` into ``{name: level}`` (levels 0–0.99)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, value = part.partition("=")
        try:
            level = float(value)
        except ValueError:
            level = float("nan")
        if not sep or not name.strip() or not (0.0 <= level <= 0.99):
            raise ValueError(_("{method}: per_layer entry {part!r} must be name=level with level 0–0.99").format(
                method=method, part=part))
        out[name.strip()] = level
    return out


@register(PruneUnstructuredConfig)
def prune_unstructured(model: nn.Module, cfg: PruneUnstructuredConfig, ctx: CompressContext) -> CompressResult:
    ctx.report(_("pruning {sparsity:.0%} of the weights ({scope})").format(sparsity=cfg.sparsity, scope=cfg.scope), 0.0)
    levels = parse_levels(cfg.per_layer, cfg.method)
    if levels:
        names = {n for n, _ in prunable_layers(model, cfg.targets)}
        unknown = sorted(set(levels) - names)
        if unknown:
            raise ValueError(_("{method}: no prunable layer named {unknown}").format(
                method=cfg.method, unknown=', '.join(unknown)))
        for name, mod in prunable_layers(model, cfg.targets):
            level = levels.get(name, cfg.sparsity)
            if level > 0:
                prune.l1_unstructured(mod, "weight", amount=level)
                prune.remove(mod, "weight")
    else:
        magnitude_prune(model, cfg.sparsity, cfg.scope, cfg.targets)
    hist = finetune(model, ctx, cfg.finetune_epochs, cfg.lr, masks=weight_masks(model, cfg.targets), start=0.05)
    ctx.report(_("pruned"), 1.0)
    return CompressResult(model=model, layers=sparsity_rows(model, cfg.targets),
                          extra={"finetune_history": hist} if hist else {})


# --- channels -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PruneChannelsConfig(MethodConfig):
    """Filter/channel pruning through Torch-Pruning's dependency graph."""

    method: ClassVar[str] = "prune-channels"
    label: ClassVar[str] = N_("Pruning: filters / channels (structured)")
    family: ClassVar[str] = "pruning"
    description: ClassVar[str] = (N_("Remove whole filters with the smallest L1/L2 norm; coupled layers shrink "
                                  "with them (Torch-Pruning), so MACs and latency fall."))

    target: str = field(default="macs", metadata={"help": N_("What `amount` reduces: macs, params, or the channel "
                                                          "ratio of every layer"),
                                                  "choices": ("macs", "params", "channels")})
    amount: float = field(default=0.5, metadata={"help": N_("Fraction of MACs / parameters / channels removed"),
                                                 "min": 0.05, "max": 0.95})
    norm: str = field(default="l2", metadata={"help": N_("Filter importance: L1 or L2 norm of its weights"),
                                              "choices": ("l1", "l2"), "formula": r"\|W_f\|_p"})
    scope: str = field(default="layer", metadata={"help": N_("layer: same ratio per layer; global: rank filters "
                                                          "across layers"), "choices": ("layer", "global")})
    finetune_epochs: int = field(default=0, metadata={"help": N_("Fine-tuning epochs after pruning"),
                                                      "min": 0, "max": 50})
    lr: float = field(default=1e-3, metadata={"help": N_("Fine-tuning learning rate"), "min": 1e-6, "max": 1.0})
    round_to: int = field(default=1, metadata={"help": N_("Keep channel counts multiples of this (0: the CPU's SIMD "
                                                       "width, 16 fp32 lanes with AVX-512, 8 with AVX2)"),
                                               "min": 0, "max": 64})
    runtime: str = field(default="fastest", metadata={"help": N_("Runtime that runs and times the pruned model and, "
                                                              "for the latency ratio, the unpruned one (fastest: "
                                                              "measured here among the verified fp32 runtimes)"),
                                                      "choices": PRUNE_RUNTIMES})
    threads: int = field(default=0, metadata={"help": N_("Runtime threads (0: PyTorch's current setting)"),
                                              "min": 0, "max": 256})
    per_layer: str = field(default="", metadata={"help": "Per-group channel ratios 'layer=ratio,...' keyed by each "
                                                         "dependency group's leading layer (e.g. from the group "
                                                         "sensitivity analysis); when given, only those groups are "
                                                         "pruned, each by its ratio, and target/amount are unused"})

    def __post_init__(self) -> None:
        check_range(self, "round_to", 0, 64)
        parse_levels(self.per_layer, self.method)
        check_choice(self, "target", ("macs", "params", "channels"))
        check_range(self, "amount", 0.05, 0.95)
        check_choice(self, "norm", ("l1", "l2"))
        check_choice(self, "scope", ("layer", "global"))
        check_range(self, "finetune_epochs", 0, 50)
        check_range(self, "lr", 1e-6, 1.0)
        check_choice(self, "runtime", PRUNE_RUNTIMES)
        check_range(self, "threads", 0, 256)


def channel_prune(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, target: str, amount: float,
                  norm: str = "l2", scope: str = "layer", steps: int = 40, round_to: int = 1,
                  per_group: dict[str, float] | None = None) -> dict:
    """Remove channels in place until ``target`` (macs/params) falls by ``amount`` (or a channel ratio).

    Torch-Pruning's ``MagnitudePruner`` steps through a linear schedule of channel ratios (up to 0.9 per
    layer in ``steps`` steps); we stop at the first step that reaches the target. With ``per_group`` (leading
    layer of a dependency group → channel ratio, see :func:`channel_groups`) only those groups are pruned, in
    one step, each by its own ratio (Torch-Pruning's ``pruning_ratio_dict``; every coupled layer of a group
    shrinks with it), and ``target``/``amount`` are unused.

    Returns:
        Before/after MACs and parameters and the number of steps taken.
    """
    import torch_pruning as tp

    model.cpu().eval()
    example = torch.zeros(1, *input_shape)
    imp = tp.importance.MagnitudeImportance(p=1 if norm == "l1" else 2)
    base_macs, base_params = count_macs(model, input_shape), count_parameters(model)[0]
    one_shot = target == "channels" or bool(per_group)
    ratios = None
    if per_group:
        mods = dict(model.named_modules())
        unknown = [n for n in per_group if n not in mods]
        if unknown:
            raise ValueError(f"no layer named {', '.join(unknown)}")
        ratios = {mods[n]: float(r) for n, r in per_group.items() if r > 0}
        amount = 0.0
    pruner = tp.pruner.MagnitudePruner(model, example, importance=imp, global_pruning=scope == "global",
                                       pruning_ratio=amount if one_shot else 0.9,
                                       pruning_ratio_dict=ratios,
                                       iterative_steps=1 if one_shot else steps,
                                       ignored_layers=classifier_layers(model, num_classes),
                                       round_to=round_to if round_to > 1 else None)
    taken = 0
    for _step in range(1 if one_shot else steps):
        pruner.step()
        taken += 1
        if one_shot:
            break
        now = count_macs(model, input_shape) if target == "macs" else count_parameters(model)[0]
        if now <= (1.0 - amount) * (base_macs if target == "macs" else base_params):
            break
    return {"macs_before": base_macs, "macs_after": count_macs(model, input_shape), "params_before": base_params,
            "params_after": count_parameters(model)[0], "steps": taken}


def channel_groups(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> list[dict]:
    """Torch-Pruning's dependency groups of ``model`` (not changed): the channels that must be removed together.

    Residual connections couple layers: the output channels of a ResNet stage's stem and of every block's last
    conv are one group (pruning one alone would break the additions), so sensitivity is measured per group (a
    layer-by-layer analysis with ``ignored_layers`` prunes nothing in such layers and reports them as robust).

    Returns:
        One dict per group, in Torch-Pruning's order: ``layer`` (the leading layer, whose name keys the group in
        ``per_layer``), ``channels`` (its output channels), ``members`` (every Conv/Linear whose weight the group
        changes, input or output side) and ``params`` (their weights' size).
    """
    import torch_pruning as tp

    work = copy.deepcopy(model).cpu().eval()
    names = {m: n for n, m in work.named_modules()}
    dg = tp.DependencyGraph().build_dependency(work, example_inputs=torch.zeros(1, *input_shape))
    out = []
    for group in dg.get_all_groups(ignored_layers=classifier_layers(work, num_classes),
                                   root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        if root not in names:
            continue
        members = list(dict.fromkeys(names[it.dep.target.module] for it in group
                                     if isinstance(it.dep.target.module, (nn.modules.conv._ConvNd, nn.Linear))
                                     and it.dep.target.module in names))
        mods = dict(work.named_modules())
        out.append({"layer": names[root], "channels": int(dg.get_out_channels(root)), "members": members,
                    "params": int(sum(mods[m].weight.numel() for m in members))})
    return out


def channel_rows(before: dict[str, tuple], model: nn.Module) -> list[dict]:
    rows = []
    for n, m in prunable_layers(model):
        out_c = m.weight.shape[0]
        b = before.get(n)
        rows.append({"name": n, "channels": int(out_c), "channels_before": int(b[0]) if b else int(out_c),
                     "channel_ratio": out_c / b[0] if b else 1.0})
    return rows


def resolve_round_to(round_to: int) -> int:
    """``round_to`` as used: 0 means the CPU's fp32 SIMD width (see :func:`nnlab.runtimes.base.simd_width`)."""
    return simd_width("fp32") if round_to == 0 else int(round_to)


def runtime_ratio(parent: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...], runtime: str = "fastest",
                  threads: int | None = None, probe: torch.Tensor | None = None, rounds: int = 10) -> dict:
    """Time the pruned model in the fastest verified fp32 runtime (or the one named) and the parent in the same.

    Returns:
        ``runner`` (the pruned model's), ``selection`` (the choice and each candidate's figures), the batch-1
        medians of both models interleaved in that runtime, and their ratio.
    """
    threads = int(threads or torch.get_num_threads())
    names = FP32_CANDIDATES if runtime == "fastest" else (runtime,)
    sel = fastest_fp32_runner(pruned, input_shape, threads, probe=probe, names=names)
    parent_runner = fp32_factories(parent, input_shape, threads, (sel.choice,))[sel.choice]()
    x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
    lat = interleaved_latency({"parent": parent_runner, "pruned": sel.runner}, x, rounds=rounds, per_round=3)
    return {"runner": sel.runner, "selection": sel, "parent_ms": lat["parent"].median_ms,
            "pruned_ms": lat["pruned"].median_ms, "ratio": lat["pruned"].median_ms / lat["parent"].median_ms}


@register(PruneChannelsConfig)
def prune_channels(model: nn.Module, cfg: PruneChannelsConfig, ctx: CompressContext) -> CompressResult:
    parent = copy.deepcopy(model).eval()
    before = {n: tuple(m.weight.shape) for n, m in prunable_layers(model)}
    round_to = resolve_round_to(cfg.round_to)
    ctx.report(_("removing channels: {amount:.0%} of {target}").format(amount=cfg.amount, target=cfg.target), 0.0)
    stats = channel_prune(model, ctx.data.input_shape, ctx.data.num_classes, cfg.target, cfg.amount, cfg.norm,
                          cfg.scope, round_to=round_to, per_group=parse_levels(cfg.per_layer, cfg.method) or None)
    ctx.check_cancel()
    hist = finetune(model, ctx, cfg.finetune_epochs, cfg.lr, start=0.1, end=0.8)
    ctx.check_cancel()
    ctx.report(_("choosing the fp32 runtime ({runtime}) and timing both models in it").format(runtime=cfg.runtime),
               0.85)
    model = model.cpu().eval()
    idx = np.sort(np.random.default_rng(ctx.seed).permutation(len(ctx.data.y_train))[:16])
    timing = runtime_ratio(parent, model, ctx.data.input_shape, cfg.runtime, cfg.threads or None,
                           probe=ctx.data.tensors("train", idx)[0])
    sel = timing["selection"]
    extra = {**stats, "round_to": round_to, "macs_ratio": stats["macs_after"] / max(1, stats["macs_before"]),
             "latency_ratio": timing["ratio"], "latency_parent_ms": timing["parent_ms"],
             "latency_pruned_ms": timing["pruned_ms"], "latency_runtime": sel.runtime,
             "runtime_choice": {**sel.to_dict(), "summary": sel.summary()},
             **({"finetune_history": hist} if hist else {})}
    ctx.report(_("pruned: {macs_ratio:.2f}× MACs, {ratio:.2f}× latency in {runtime}").format(
        macs_ratio=extra['macs_ratio'], ratio=timing['ratio'], runtime=sel.runtime), 1.0)
    return CompressResult(model=model, layers=channel_rows(before, model), runner=timing["runner"], extra=extra)


# --- iterative (seed 000, Algorithm 1) ----------------------------------------------------------------------

@dataclass(frozen=True)
class PruneIterativeConfig(MethodConfig):
    """Seed 000 Algorithm 1: N rounds of (prune a fraction p, fine-tune)."""

    method: ClassVar[str] = "prune-iterative"
    label: ClassVar[str] = N_("Pruning: iterative prune + fine-tune")
    family: ClassVar[str] = "pruning"
    description: ClassVar[str] = (N_("Rounds of pruning a fraction of what remains, then fine-tuning; stops when "
                                  "validation accuracy falls below the floor or the budget is spent, and "
                                  "keeps the last model above the floor."))

    structure: str = field(default="unstructured", metadata={"help": N_("Prune weights (unstructured) or whole "
                                                                     "channels"),
                                                           "choices": ("unstructured", "channels")})
    rounds: int = field(default=3, metadata={"help": N_("Round budget N"), "min": 1, "max": 30})
    fraction: float = field(default=0.3, metadata={"help": N_("Fraction p of the remaining weights (or channels) "
                                                           "pruned per round"), "min": 0.01, "max": 0.9,
                                                   "formula": r"s_i = 1-(1-p)^i"})
    scope: str = field(default="global", metadata={"help": N_("layer or global ranking"),
                                                   "choices": ("layer", "global")})
    epochs: int = field(default=1, metadata={"help": N_("Fine-tuning epochs per round"), "min": 0, "max": 50})
    lr: float = field(default=1e-3, metadata={"help": N_("Fine-tuning learning rate"), "min": 1e-6, "max": 1.0})
    max_drop: float = field(default=0.02, metadata={"help": N_("Accuracy floor: stop when validation accuracy falls "
                                                            "more than this below the start (1 = off)"),
                                                    "min": 0.0, "max": 1.0})
    max_seconds: float = field(default=0.0, metadata={"help": N_("Compute budget in seconds (0 = rounds only)"),
                                                      "min": 0.0, "max": 86400.0})
    penalty: str = field(default="none", metadata={"help": N_("Penalty added to the fine-tuning loss (seed 002)"),
                                                   "choices": ("none", "l1", "group"),
                                                   "formula": r"L + \lambda\sum|w| \;or\; L + \lambda\sum_f\|W_f\|_2"})
    penalty_weight: float = field(default=1e-5, metadata={"help": N_("Penalty weight λ"), "min": 0.0, "max": 1.0})
    rewind: bool = field(default=False, metadata={"help": N_("Lottery-ticket rewinding: after each pruning, reset "
                                                          "surviving weights to their values before round 1")})
    norm: str = field(default="l2", metadata={"help": N_("Channel importance norm (channels only)"),
                                              "choices": ("l1", "l2")})

    def __post_init__(self) -> None:
        check_choice(self, "structure", ("unstructured", "channels"))
        check_range(self, "rounds", 1, 30)
        check_range(self, "fraction", 0.01, 0.9)
        check_choice(self, "scope", ("layer", "global"))
        check_range(self, "epochs", 0, 50)
        check_range(self, "lr", 1e-6, 1.0)
        check_range(self, "max_drop", 0.0, 1.0)
        check_range(self, "max_seconds", 0.0, 86400.0)
        check_choice(self, "penalty", ("none", "l1", "group"))
        check_range(self, "penalty_weight", 0.0, 1.0)
        check_choice(self, "norm", ("l1", "l2"))
        if self.rewind and self.structure != "unstructured":
            raise ValueError(_("{method}: rewinding needs unstructured pruning (channel pruning changes "
                               "shapes)").format(
                method=self.method))
        if 1.0 - (1.0 - self.fraction) ** self.rounds > 0.995 and self.structure == "unstructured":
            raise ValueError(_("{method}: {rounds} rounds of {fraction:.0%} exceed 99.5 % sparsity").format(
                method=self.method, rounds=self.rounds, fraction=self.fraction))


@register(PruneIterativeConfig)
def prune_iterative(model: nn.Module, cfg: PruneIterativeConfig, ctx: CompressContext) -> CompressResult:
    data = ctx.data
    tune_idx, val_idx = split_train(len(data.y_train), ctx.seed)
    _loss, start_acc = quick_eval(model.cpu(), data, "train", indices=val_idx, device=torch.device("cpu"))
    floor = start_acc - cfg.max_drop
    rewind_state = copy.deepcopy(model.state_dict()) if cfg.rewind else None
    pen = penalty_fn(cfg.penalty, cfg.penalty_weight)
    kept = copy.deepcopy(model)
    history: list[dict] = []
    t0 = time.perf_counter()
    stop = "round budget"
    for i in range(1, cfg.rounds + 1):
        ctx.check_cancel()
        a, b = (i - 1) / cfg.rounds, i / cfg.rounds
        ctx.report(_("round {i}/{rounds}: pruning").format(i=i, rounds=cfg.rounds), a)
        masks = None
        if cfg.structure == "unstructured":
            target = 1.0 - (1.0 - cfg.fraction) ** i  # s_i: fraction p of what remained is removed
            magnitude_prune(model, target, cfg.scope)
            masks = weight_masks(model)
            if rewind_state is not None:  # lottery ticket: surviving weights back to their early values
                model.load_state_dict(rewind_state)
                apply_masks(model, masks)
        else:
            channel_prune(model, data.input_shape, data.num_classes, "channels", cfg.fraction, cfg.norm, cfg.scope)
        finetune(model, ctx, cfg.epochs, cfg.lr, masks=masks, penalty=pen, indices=tune_idx,
                 start=a + 0.1 * (b - a), end=b, label=f"round {i}/{cfg.rounds}")
        _loss, acc = quick_eval(model, data, "train", indices=val_idx, device=torch.device("cpu"))
        total, nonzero = count_parameters(model)
        row = {"round": i, "val_accuracy": acc, "sparsity": 1.0 - nonzero / total, "params": total,
               "macs": count_macs(model, data.input_shape), "seconds": round(time.perf_counter() - t0, 2)}
        history.append(row)
        if acc < floor:
            stop = f"accuracy floor (round {i}: {acc:.3f} < {floor:.3f}); kept round {i - 1}"
            break
        kept = copy.deepcopy(model)
        if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
            stop = f"time budget after round {i}"
            break
    ctx.report(_("done"), 1.0)
    rows = sparsity_rows(kept)
    return CompressResult(model=kept, layers=rows, extra={"rounds": history, "stopped_by": stop,
                                                           "start_val_accuracy": start_acc})
