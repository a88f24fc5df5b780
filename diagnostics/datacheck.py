"""The lecture's data checks in one pass: class balance, suspected label errors, train/test mismatch and
near-duplicates, all on one extraction of the model's penultimate features.

Label errors here use the *features* route (a cross-validated logistic regression on the penultimate
features of every training sample (``max_label`` caps it): seconds on 60 000 images.
The features were learned with the given labels, so the probabilities are only partly out-of-sample: on
digits with 5 % flipped labels this route found 85 % of them with a demo CNN trained 3 epochs, but only
27 % after 18 epochs, once the network had memorised the wrong labels. k-fold retraining
(:func:`diagnostics.labels.crossval_probs_retrain`) is the exact, slower route.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from collections.abc import Callable
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

    def to_dict(self) -> dict:
        """Everything, as JSON-able values (arrays as lists), for the workspace."""
        return _jsonable(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataReport:
        """Rebuild a report stored with :meth:`to_dict`."""
        def arr(v: object, dtype: object = None) -> np.ndarray:
            if isinstance(v, dict) and "__nd__" in v:
                return np.asarray(v["__nd__"], dtype=v["dtype"])
            return np.asarray(v, dtype=dtype)

        lab, sh, px, du = d["labels"], d["shift"], d["pixels"], d["duplicates"]
        return cls(train_counts=arr(d["train_counts"]), test_counts=arr(d["test_counts"]),
                   imbalance=float(d["imbalance"]),
                   shift=ClassShift(arr(sh["train_freq"]), arr(sh["test_freq"]), float(sh["tv_distance"]),
                                    float(sh["chi2_p"])),
                   pixels=PixelStats(**{k: arr(v) for k, v in px.items()}),
                   labels=LabelIssues(indices=arr(lab["indices"], dtype=np.int64), given=arr(lab["given"], np.int64),
                                      suggested=arr(lab["suggested"], np.int64),
                                      self_confidence=arr(lab["self_confidence"], np.float64),
                                      thresholds=arr(lab["thresholds"]), confident_joint=arr(lab["confident_joint"]),
                                      checked=int(lab["checked"]), method=lab.get("method", "")),
                   label_subset=arr(d["label_subset"], np.int64), domain_auc=float(d["domain_auc"]),
                   duplicates=Duplicates(test_index=arr(du["test_index"], np.int64),
                                         train_index=arr(du["train_index"], np.int64),
                                         similarity=arr(du["similarity"]), pixel_diff=arr(du["pixel_diff"]),
                                         same_label=arr(du["same_label"], bool), threshold=float(du["threshold"]),
                                         pixel_threshold=float(du["pixel_threshold"]), checked=int(du["checked"])),
                   seconds=float(d["seconds"]))

    def summary(self) -> dict:
        """Plain numbers for the workspace cache and the diagnosis."""
        return {"imbalance_ratio": self.imbalance, "class_shift": self.shift.tv_distance,
                "pixel_shift": float(np.max(np.abs(self.pixels.mean_shift))),
                "label_issues": int(len(self.labels.indices)), "label_checked": int(self.labels.checked),
                "label_issue_fraction": self.labels.fraction, "domain_auc": self.domain_auc,
                "duplicates": int(len(self.duplicates.test_index)), "label_method": self.labels.method,
                "seconds": self.seconds}


def data_report(model: nn.Module, data: ImageDataset, max_label: int | None = None, max_domain: int = 10000,
                dup_threshold: float = 0.98, dup_pixel_threshold: float = 0.02, seed: int = 0,
                progress: Callable[[str, float], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> DataReport:
    """Run every data check for ``model`` on ``data``.

    The feature hook goes on a private copy: the given model may be shared by other sessions running it
    at the same time, and their forward passes would otherwise pass through the hook too.
    """
    t0 = time.perf_counter()
    model = copy.deepcopy(model)
    n_tr, n_te = len(data.y_train), len(data.y_test)
    share = n_tr / max(1, n_tr + n_te) * 0.8

    def part(start: float, end: float) -> Callable[[str, float], None] | None:
        if progress is None:
            return None
        return lambda m, f: progress(m, start + (end - start) * f)

    f_train, _ = features_and_logits(model, data, "train", progress=part(0.0, share), cancel=cancel)
    f_test, _ = features_and_logits(model, data, "test", progress=part(share, 0.8), cancel=cancel)
    if progress is not None:
        progress("label errors (cross-validated logistic regression), mismatch, near-duplicates", 0.82)
    ytr = data.y_train.numpy()
    sub = subsample(ytr, max_label or len(ytr), seed)  # by default every training sample is checked
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


def _jsonable(obj: object) -> object:
    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, np.ndarray):
        return {"__nd__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else (1e308 if obj > 0 else -1e308)
    return obj


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
