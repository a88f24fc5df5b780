"""The lecture's data checks in one pass: class balance, suspected label errors, train/test mismatch and
near-duplicates, all on one extraction of the model's penultimate features.

Label errors here use the *features* route (a cross-validated logistic regression on the penultimate
features, on a stratified subsample of at most ``max_label`` training samples): fast on 60 000 images.
The features were learned with the given labels, so the probabilities are only partly out-of-sample: on
digits with 5 % flipped labels this route found 85 % of them with a demo CNN trained 3 epochs, but only
27 % after 18 epochs, once the network had memorised the wrong labels. k-fold retraining
(:func:`diagnostics.labels.crossval_probs_retrain`) is the exact, slower route.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from diagnostics.diagnosis import Facts
from diagnostics.labels import LabelIssues, crossval_probs_features, find_label_issues, subsample
from diagnostics.mismatch import (ClassShift, Duplicates, PixelStats, class_shift, domain_auc, features_and_logits,
                                  imbalance_ratio, near_duplicates, pixel_stats)
from nnlab.data import ImageDataset


@dataclass(frozen=True)
class DataReport:
    """Results of :func:`data_report`."""

    train_counts: np.ndarray
    test_counts: np.ndarray
    imbalance: float
    shift: ClassShift
    pixels: PixelStats
    labels: LabelIssues
    label_subset: np.ndarray  # training indices checked; ``labels.indices`` index into this
    domain_auc: float
    duplicates: Duplicates
    seconds: float

    def summary(self) -> dict:
        """Plain numbers for the workspace cache and the diagnosis."""
        return {"imbalance_ratio": self.imbalance, "class_shift": self.shift.tv_distance,
                "pixel_shift": float(np.max(np.abs(self.pixels.mean_shift))),
                "label_issues": int(len(self.labels.indices)), "label_checked": int(self.labels.checked),
                "label_issue_fraction": self.labels.fraction, "domain_auc": self.domain_auc,
                "duplicates": int(len(self.duplicates.test_index)), "label_method": self.labels.method,
                "seconds": self.seconds}


def data_report(model: nn.Module, data: ImageDataset, max_label: int = 20000, max_domain: int = 5000,
                dup_threshold: float = 0.98, dup_pixel_threshold: float = 0.02, seed: int = 0) -> DataReport:
    """Run every data check for ``model`` on ``data``.

    The feature hook goes on a private copy: the given model may be shared by other sessions running it
    at the same time, and their forward passes would otherwise pass through the hook too.
    """
    t0 = time.perf_counter()
    model = copy.deepcopy(model)
    f_train, _ = features_and_logits(model, data, "train")
    f_test, _ = features_and_logits(model, data, "test")
    ytr = data.y_train.numpy()
    sub = subsample(ytr, max_label, seed)
    probs = crossval_probs_features(f_train[sub], ytr[sub], seed=seed)
    issues = find_label_issues(ytr[sub], probs)
    issues = replace(issues, method=f"penultimate features + 5-fold logistic regression on {len(sub):,} of "
                                    f"{len(ytr):,} training samples")
    tc, sc = data.class_counts("train"), data.class_counts("test")
    return DataReport(train_counts=tc, test_counts=sc, imbalance=imbalance_ratio(tc), shift=class_shift(tc, sc),
                      pixels=pixel_stats(data), labels=issues, label_subset=sub,
                      domain_auc=domain_auc(f_train, f_test, max_per_split=max_domain, seed=seed),
                      duplicates=near_duplicates(data, f_train, f_test, dup_threshold, dup_pixel_threshold),
                      seconds=time.perf_counter() - t0)


def cheap_summary(data: ImageDataset) -> dict:
    """The checks that need no model: class balance, class-frequency shift, pixel-mean shift (seconds)."""
    tc, sc = data.class_counts("train"), data.class_counts("test")
    return {"imbalance_ratio": imbalance_ratio(tc), "class_shift": class_shift(tc, sc).tv_distance,
            "pixel_shift": float(np.max(np.abs(pixel_stats(data).mean_shift)))}


def facts_from(summary: dict | None, history: list[dict] | None = None, test_slope: float | None = None) -> Facts:
    """Assemble :class:`Facts` from a (partial) data-report summary, a history and a curve slope."""
    s = summary or {}
    return Facts(history=history or [], test_slope=test_slope, label_issue_fraction=s.get("label_issue_fraction"),
                 label_issues=s.get("label_issues"), imbalance_ratio=s.get("imbalance_ratio"),
                 domain_auc=s.get("domain_auc"), class_shift=s.get("class_shift"), pixel_shift=s.get("pixel_shift"),
                 duplicates=s.get("duplicates"))


def report_key(model_id: str, dataset_id: str) -> str:
    """Workspace run key of a data report's summary."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"datacheck_{model_id}_{dataset_id}")[:120]
