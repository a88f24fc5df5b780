"""One training loop for everything nnlab trains: the demo model, subset retraining, fine-tuning, distillation.

Progress goes to a callback; a cancel callback stops the loop between batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from nnlab import config
from nnlab.data.sets import ImageDataset
from nnlab.errors import Cancelled  # noqa: F401 - raised here, and importable from here as before
from nnlab.evaluate import evaluate
from nnlab.i18n import _
from nnlab.seeding import seeded_dropout

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[nn.Module], None]


@dataclass
class Progress:
    """One progress report: where a run is and how it is doing."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    accuracy: float
    message: str = ""

    @property
    def fraction(self) -> float:
        done = (self.epoch - 1) * self.batches + self.batch
        return min(1.0, done / max(1, self.epochs * self.batches))


@dataclass
class EpochStats:
    """Per-epoch history: train loss/accuracy (running, over the epoch) and test loss/accuracy."""

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train_model`.

    Args:
        epochs: Passes over the training data (or subset).
        lr: Peak learning rate.
        batch_size: Samples per step.
        weight_decay: Decoupled (AdamW) or L2 (SGD) weight decay.
        seed: Seed for shuffling, augmentation and dropout (this run's own generators; the global RNG is untouched).
        eval_test: Evaluate on the test split after each epoch.
        max_test: Evaluate on at most this many test samples (0: all).
        optimizer: "adamw" or "sgd" (momentum 0.9, Nesterov).
        schedule: "onecycle" (warm-up then annealing), "cosine" (annealing from ``lr``) or "constant".
        flip: Random horizontal flips.
        crop: Random crops: the batch is padded by this fraction of its side (reflection) and cropped back at a
            random offset (0: off).
        label_smoothing: Cross-entropy label smoothing.
    """

    epochs: int = 5
    lr: float = 3e-3
    batch_size: int = 128
    weight_decay: float = 1e-4
    seed: int = 0
    eval_test: bool = True
    max_test: int = 0
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    flip: bool = False
    crop: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(_("epochs must be at least 1, got {epochs}").format(epochs=self.epochs))
        if not (0 < self.lr < 10):
            raise ValueError(_("learning rate must be in (0, 10), got {lr}").format(lr=self.lr))
        if self.batch_size < 1:
            raise ValueError(_("batch size must be at least 1, got {batch_size}").format(batch_size=self.batch_size))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(_("optimizer must be one of {choices}, got {optimizer!r}").format(
                choices=', '.join(OPTIMIZERS), optimizer=self.optimizer))
        if self.schedule not in SCHEDULES:
            raise ValueError(_("schedule must be one of {choices}, got {schedule!r}").format(
                choices=', '.join(SCHEDULES), schedule=self.schedule))
        if not (0.0 <= self.crop <= 0.5):
            raise ValueError(_("crop padding must be between 0 and 0.5 of the side, got {crop}").format(
                crop=self.crop))
        if not (0.0 <= self.label_smoothing < 1.0):
            raise ValueError(_("label smoothing must be in [0, 1), got {label_smoothing}").format(
                label_smoothing=self.label_smoothing))
        if self.weight_decay < 0:
            raise ValueError(_("weight decay must be ≥ 0, got {weight_decay}").format(weight_decay=self.weight_decay))

    def to_dict(self) -> dict:
        return asdict(self)


def augment(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and random (reflection-padded) crops of a normalised batch, per sample."""
    if cfg.flip:
        flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if cfg.crop > 0:
        h, w = x.shape[-2:]
        ph, pw = max(1, round(h * cfg.crop)), max(1, round(w * cfg.crop))
        padded = nn.functional.pad(x, (pw, pw, ph, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        dy = torch.randint(0, 2 * ph + 1, (len(x),), generator=generator, device=x.device)
        dx = torch.randint(0, 2 * pw + 1, (len(x),), generator=generator, device=x.device)
        n, c = x.shape[:2]
        iy = (dy.view(n, 1) + torch.arange(h, device=x.device))[:, None, :, None]
        ix = (dx.view(n, 1) + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(n, device=x.device)[:, None, None, None],
                   torch.arange(c, device=x.device)[None, :, None, None], iy, ix]
    return x


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle" and total_steps >= 8:
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25)
    if cfg.schedule == "cosine" and total_steps >= 2:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    # constant, or too few steps for a one-cycle schedule (it divides by its phase lengths)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def quick_eval(model: nn.Module, data: ImageDataset, split: str, indices: np.ndarray | None = None,
               device: torch.device | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` (or ``indices`` of it), in eval mode.

    One pass of :func:`nnlab.evaluate.evaluate`; the model's train/eval mode is restored afterwards.
    """
    if indices is not None and len(indices) == 0:
        return 0.0, 0.0
    was_training = model.training
    try:
        ev = evaluate(model, data, split, batch_size=1024, indices=indices, device=device)
    finally:
        model.train(was_training)
    return float(ev.losses.mean()), ev.accuracy


def train_model(model: nn.Module, data: ImageDataset, cfg: TrainConfig = TrainConfig(),
                indices: np.ndarray | None = None, loss_fn: LossFn = cross_entropy_loss,
                after_step: StepHook | None = None, progress: Callable[[Progress], None] | None = None,
                cancel: Callable[[], bool] | None = None, device: torch.device | None = None,
                params: list[nn.Parameter] | None = None) -> list[EpochStats]:
    """Train ``model`` in place on ``data``'s training split (or ``indices`` of it).

    Args:
        model: The model; trained in place (callers pass a copy when the original must stay).
        data: The dataset.
        cfg: Epochs, learning rate and the rest.
        indices: Train on these training-set indices only.
        loss_fn: ``loss_fn(model, x, y)``; distillation and penalties plug in here.
        after_step: Called after each optimiser step (re-applying pruning masks, for example).
        progress: Receives a :class:`Progress` every few batches.
        cancel: Polled between batches; returning True raises :class:`Cancelled`.
        device: Where to train; CUDA when present by default.
        params: Parameters to optimise (default: all that require grad).

    Returns:
        The per-epoch history.
    """
    device = device or config.device()
    model.to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)  # dropout masks: this run's own RNG
    n = len(indices) if indices is not None else len(data.labels("train"))
    if n == 0:
        raise ValueError(_("no training samples"))
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(trainable, cfg)
    sched = _schedule(opt, cfg, cfg.epochs * steps_per_epoch)
    if loss_fn is cross_entropy_loss and cfg.label_smoothing:
        def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: F811
            return nn.functional.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
    with seeded_dropout(model, generator):
        return _epochs(model, data, cfg, indices, loss_fn, after_step, progress, cancel, device, opt, sched,
                       steps_per_epoch, n, generator)


def _epochs(model: nn.Module, data: ImageDataset, cfg: TrainConfig, indices: np.ndarray | None, loss_fn: LossFn,
            after_step: StepHook | None, progress: Callable[[Progress], None] | None,
            cancel: Callable[[], bool] | None, device: torch.device, opt: torch.optim.Optimizer,
            sched: torch.optim.lr_scheduler.LRScheduler, steps_per_epoch: int, n: int,
            generator: torch.Generator) -> list[EpochStats]:
    history: list[EpochStats] = []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        seen, loss_sum = 0, 0.0
        for b, (x, y) in enumerate(data.batches("train", cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch,
                                                indices=indices), start=1):
            if cancel is not None and cancel():
                raise Cancelled(_("cancelled by the user"))
            x, y = x.to(device), y.to(device)
            if cfg.flip or cfg.crop:
                x = augment(x, cfg, generator)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, x, y)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(model)
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            if progress is not None and (b % 10 == 0 or b == steps_per_epoch):
                progress(Progress(epoch, cfg.epochs, b, steps_per_epoch, loss_sum / seen, float("nan"),
                                  _("epoch {epoch}/{epochs}, batch {batch}/{batches}, loss {loss:.3f}").format(
                                      epoch=epoch, epochs=cfg.epochs, batch=b, batches=steps_per_epoch,
                                      loss=loss_sum / seen)))
        # train metrics in eval mode over (at most 10 000 of) the samples trained on
        train_idx = np.asarray(indices)[:10000] if indices is not None else np.arange(min(10000, n))
        train_loss, train_acc = quick_eval(model, data, "train", indices=train_idx, device=device)
        test_idx = np.arange(min(cfg.max_test, len(data.labels("test")))) if cfg.max_test else None
        test_loss, test_acc = (quick_eval(model, data, "test", indices=test_idx, device=device) if cfg.eval_test
                               else (float("nan"), float("nan")))
        history.append(EpochStats(epoch, train_loss, train_acc, test_loss, test_acc, time.perf_counter() - t0))
        if progress is not None:
            progress(Progress(epoch, cfg.epochs, steps_per_epoch, steps_per_epoch, train_loss, test_acc,
                              _("epoch {epoch}/{epochs}: train loss {train_loss:.3f}, train acc {train_acc:.3f}, "
                                "test acc {test_acc:.3f}").format(epoch=epoch, epochs=cfg.epochs,
                                                                  train_loss=train_loss, train_acc=train_acc,
                                                                  test_acc=test_acc)))
    model.eval()
    return history

