"""Knowledge distillation (seed 002; Hinton et al. 2015): a small student trained on the teacher's soft targets.

Loss (seed 002), with the soft term scaled by τ² so its gradients keep their size as τ grows::

    L = α·H(y, σ(z_s)) + β·τ²·H(σ(z_t/τ), σ(z_s/τ))

H is the cross-entropy, σ the softmax, z_s and z_t the student's and teacher's logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compression.pruning import batch_size_for
from compression.registry import CompressContext, CompressResult, MethodConfig, check_choice, check_range, register
from nnlab.i18n import N_, _
from nnlab.models.randinit import seeded_init
from nnlab.models.registry import create_model, list_models
from nnlab.train import Progress, TrainConfig, train_model


def distillation_loss(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, alpha: float, beta: float,
                      tau: float) -> torch.Tensor:
    """``α·H(y, σ(z_s)) + β·τ²·H(σ(z_t/τ), σ(z_s/τ))``, averaged over the batch."""
    hard = F.cross_entropy(z_s, y)
    soft_targets = F.softmax(z_t.detach() / tau, dim=1)
    soft = -(soft_targets * F.log_softmax(z_s / tau, dim=1)).sum(dim=1).mean()
    return alpha * hard + beta * tau * tau * soft


@dataclass(frozen=True)
class DistillConfig(MethodConfig):
    """Teacher → student distillation."""

    method: ClassVar[str] = "distill"
    label: ClassVar[str] = N_("Knowledge distillation (teacher → student)")
    family: ClassVar[str] = "distillation"
    description: ClassVar[str] = (N_("Train a smaller registered architecture on the labels and on the teacher's "
                                  "temperature-softened outputs."))

    student: str = field(default="demo-cnn-small", metadata={"help": N_("Student architecture (registered model)"),
                                                             "choices": tuple(list_models())})
    alpha: float = field(default=0.5, metadata={"help": N_("Weight α of the hard-label cross-entropy"),
                                                "min": 0.0, "max": 10.0, "formula": r"\alpha H(y,\sigma(z_s))"})
    beta: float = field(default=0.5, metadata={"help": N_("Weight β of the soft-target term (scaled by τ²)"),
                                               "min": 0.0, "max": 10.0,
                                               "formula": r"\beta\tau^2 H(\sigma(z_t/\tau),\sigma(z_s/\tau))"})
    tau: float = field(default=4.0, metadata={"help": N_("Temperature τ of the softmax"), "min": 0.5, "max": 50.0})
    epochs: int = field(default=10, metadata={"help": N_("Training epochs of the student"), "min": 1, "max": 200})
    lr: float = field(default=1e-2, metadata={"help": N_("Learning rate (peak of the one-cycle schedule)"),
                                              "min": 1e-6, "max": 1.0})
    subset: int = field(default=0, metadata={"help": N_("Train on the first N training samples only (0 = all)"),
                                             "min": 0, "max": 10_000_000})
    pretrained_student: bool = field(default=False, metadata={"help": N_("Start torchvision students from "
                                                                      "ImageNet weights (needs a download)")})

    def __post_init__(self) -> None:
        check_choice(self, "student", tuple(list_models()))
        check_range(self, "alpha", 0.0, 10.0)
        check_range(self, "beta", 0.0, 10.0)
        if self.alpha + self.beta <= 0:
            raise ValueError(_("{method}: alpha + beta (α + β) must be positive").format(method=self.method))
        check_range(self, "tau", 0.5, 50.0)
        check_range(self, "epochs", 1, 200)
        check_range(self, "lr", 1e-6, 1.0)
        check_range(self, "subset", 0, 10_000_000)


def train_student(teacher: nn.Module | None, cfg: DistillConfig, ctx: CompressContext) -> tuple[nn.Module, list]:
    """Build and train the student; with ``teacher=None`` (or β=0) it is plain supervised training."""
    data = ctx.data
    c, h, w = data.input_shape
    device = torch.device(ctx.device) if isinstance(ctx.device, str) else ctx.device
    student = create_model(cfg.student, c, data.num_classes, (h, w), pretrained=cfg.pretrained_student)
    if not cfg.pretrained_student:
        seeded_init(student, ctx.seed)  # reproducible initial weights without the global RNG
    was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher = teacher.to(device).eval()  # forward passes under no_grad: its weights never change

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z_s = model(x)
        if teacher is None or cfg.beta == 0:
            return F.cross_entropy(z_s, y)
        with torch.no_grad():
            z_t = teacher(x)
        return distillation_loss(z_s, z_t, y, cfg.alpha, cfg.beta, cfg.tau)

    def prog(p: Progress) -> None:
        ctx.report(_("student: {message}").format(message=p.message), p.fraction)

    n = len(data.y_train)
    indices = np.arange(min(cfg.subset, n)) if cfg.subset else None
    size = len(indices) if indices is not None else n
    tc = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=batch_size_for(size, cfg.epochs), seed=ctx.seed,
                     eval_test=False)
    hist = train_model(student, data, tc, indices=indices, loss_fn=loss_fn, progress=prog, cancel=ctx.cancel,
                       device=device)
    if teacher is not None:
        teacher.cpu().train(was_training)
    return student.cpu().eval(), [h.to_dict() for h in hist]


@register(DistillConfig)
def distill(model: nn.Module, cfg: DistillConfig, ctx: CompressContext) -> CompressResult:
    student, hist = train_student(model, cfg, ctx)
    ctx.report(_("student trained"), 1.0)
    return CompressResult(model=student, arch=cfg.student, extra={"history": hist, "student": cfg.student,
                                                                  "teacher_arch": ctx.arch})
