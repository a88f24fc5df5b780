"""The one evaluation pass: a model over a dataset split, once, per-sample results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nnlab import config
from nnlab.data.sets import ImageDataset
from nnlab.i18n import _


@dataclass(eq=False)
class EvalResult:
    """Per-sample outputs of one pass over a split.

    Attributes:
        logits: ``N×K`` float32.
        probs: ``N×K`` softmax probabilities.
        losses: ``N`` cross-entropy per sample.
        preds: ``N`` predicted class.
        labels: ``N`` true class.
    """

    logits: np.ndarray
    probs: np.ndarray
    losses: np.ndarray
    preds: np.ndarray
    labels: np.ndarray

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.labels).mean()) if len(self.labels) else float("nan")

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy

    def per_class_accuracy(self, num_classes: int) -> list[float]:
        out = []
        for c in range(num_classes):
            m = self.labels == c
            out.append(float((self.preds[m] == c).mean()) if m.any() else float("nan"))
        return out


def predict_logits(model: nn.Module | None, data: ImageDataset, split: str, batch_size: int = 512,
                   indices: np.ndarray | None = None, device: torch.device | None = None,
                   progress: Callable[[str, float], None] | None = None,
                   cancel: Callable[[], bool] | None = None, runner: Any = None) -> np.ndarray:
    """Logits of ``model`` over a split (or ``indices`` of it), batched, in inference mode.

    Batches stream from the dataset (read and normalised ahead in a background thread). ``runner``: run the
    batches in that runtime (anything with ``predict_logits(np.ndarray) -> np.ndarray``, e.g. ONNX Runtime)
    instead of eager PyTorch (``model`` may then be None). ``progress(message, fraction)`` hears about every batch; ``cancel()`` returning
    True stops the pass (raising :class:`nnlab.train.Cancelled`).
    """
    if runner is None:
        if model is None:
            raise ValueError(_("predict_logits needs a model or a runner"))
        device = device or _model_device(model)
        model.eval()
    outs = []
    n = len(indices) if indices is not None else len(data.labels(split))
    done = 0
    with torch.inference_mode():
        for x, _y in data.stream(split, batch_size, indices=indices):
            if cancel is not None and cancel():
                from nnlab.errors import Cancelled

                raise Cancelled(_("cancelled by the user"))
            if runner is not None:
                outs.append(torch.from_numpy(np.asarray(runner.predict_logits(x.numpy()), dtype=np.float32)))
            else:
                outs.append(model(x.to(device)).float().cpu())
            done += len(x)
            if progress is not None:
                progress(_("evaluating the {split} split: {done:,}/{n:,} images").format(split=split, done=done, n=n),
                         done / max(1, n))
    return torch.cat(outs).numpy() if outs else np.zeros((0, data.num_classes), np.float32)


def result_from_logits(logits: np.ndarray, labels: np.ndarray) -> EvalResult:
    """Build an :class:`EvalResult` from logits and labels (softmax, per-sample cross-entropy, argmax)."""
    t = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    logp = torch.log_softmax(t, dim=1)
    losses = -logp.gather(1, y.view(-1, 1)).squeeze(1) if len(y) else torch.zeros(0)
    return EvalResult(logits=t.numpy(), probs=logp.exp().numpy(), losses=losses.numpy(),
                      preds=t.argmax(1).numpy() if len(y) else np.zeros(0, np.int64), labels=y.numpy())


def evaluate(model: nn.Module, data: ImageDataset, split: str = "test", batch_size: int = 512,
             indices: np.ndarray | None = None, device: torch.device | None = None) -> EvalResult:
    """Run ``model`` once over ``split`` and return per-sample logits, probabilities, losses and predictions."""
    logits = predict_logits(model, data, split, batch_size, indices, device)
    labels = data.labels(split).numpy()
    if indices is not None:
        labels = labels[np.asarray(indices)]
    return result_from_logits(logits, labels)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return config.device()
