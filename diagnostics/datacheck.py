"""The lecture's data checks in one pass: class balance, suspected label errors, train/test mismatch and
near-duplicates, all on one extraction of the model's penultimate features.

Label errors here use the *features* route (a cross-validated logistic regression on the penultimate
features of every training sample (``max_label`` caps it): seconds on 60 000 images.
The features were learned with the given labels, so the probabilities are only partly out-of-sample: on
digits with 5 % flipped labels this route found 85 % of them with a demo CNN trained 3 epochs, but only
27 % after 18 epochs, once the network had memorised the wrong labels. k-fold retraining
(:func:`diagnostics.labels.crossval_probs_retrain`) is the exact, slower route.

The report also carries what the Data checks page's galleries show, so the page only draws: for each suspected
label error the nearest training samples of the suggested class in the penultimate-feature space, and the test
samples the domain classifier finds most "test-like", with their scores.
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
from diagnostics.labels import (
    LabelIssues,
    crossval_probs_features,
    find_label_issues,
    subsample,
)
from diagnostics.mismatch import (
    ClassShift,
    Duplicates,
    PixelStats,
    class_shift,
    domain_classifier,
    feature_model,
    features_and_logits,
    imbalance_ratio,
    near_duplicates,
    pixel_stats,
)
from nnlab.data.sets import ImageDataset
from nnlab.i18n import N_, _, num
from nnlab.runtimes import bulk
from nnlab.workspace import Workspace, safe_key

REPORT_VERSION = 2  # 2: gallery fields (label-error neighbours, suggested-label probabilities, test-like samples)
NEIGHBOURS = 5  # nearest training samples of the suggested class shown per suspected label error
MISMATCH_SHOWN = 48  # most test-like test samples kept for the mismatch gallery


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
    # gallery fields (empty in reports stored before version 2)
    label_neighbours: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, NEIGHBOURS), np.int64))
    label_neighbour_similarity: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, NEIGHBOURS), np.float64))
    label_suggested_prob: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float64))
    mismatch_test_index: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    mismatch_score: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float64))
    version: int = 1
    runtime: str = ""  # the feature pass's runtime and why (reports stored before it: empty)

    @property
    def label_train_index(self) -> np.ndarray:
        """Training-set index of each suspected label error (``labels.indices`` index into ``label_subset``)."""
        return self.label_subset[self.labels.indices]

    @property
    def has_galleries(self) -> bool:
        """Whether this report carries the galleries' fields (reports stored before version 2 do not)."""
        return self.version >= 2

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
                   seconds=float(d["seconds"]),
                   **({"label_neighbours": arr(d["label_neighbours"], np.int64).reshape(-1, NEIGHBOURS),
                       "label_neighbour_similarity": arr(d["label_neighbour_similarity"],
                                                         np.float64).reshape(-1, NEIGHBOURS),
                       "label_suggested_prob": arr(d["label_suggested_prob"], np.float64),
                       "mismatch_test_index": arr(d["mismatch_test_index"], np.int64),
                       "mismatch_score": arr(d["mismatch_score"], np.float64),
                       "version": int(d["version"])} if int(d.get("version", 1)) >= 2 else {}),
                   runtime=str(d.get("runtime", "")))

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
                cancel: Callable[[], bool] | None = None, min_runtime_images: int | None = None) -> DataReport:
    """Run every data check for ``model`` on ``data``.

    The feature pass runs in the fastest runtime verified for the model (:mod:`nnlab.runtimes.bulk`; at least
    ``min_runtime_images`` images, default :data:`nnlab.runtimes.bulk.MIN_IMAGES`, to be worth choosing one).

    When the feature pass stays in eager PyTorch, its hook goes on a private copy: the given model may be
    shared by other sessions running it at the same time, and their forward passes would otherwise pass
    through the hook too. A runtime runs its own converted copy, so no copy is made for it.
    """
    t0 = time.perf_counter()
    n_tr, n_te = len(data.y_train), len(data.y_test)
    share = n_tr / max(1, n_tr + n_te) * 0.8

    def part(start: float, end: float) -> Callable[[str, float], None] | None:
        if progress is None:
            return None
        return lambda m, f: progress(m, start + (end - start) * f)

    rt, _unused = features_runtime(model, data, n_tr + n_te, min_images=min_runtime_images)  # it converts copies
    if rt.runner is None:
        model = copy.deepcopy(model)  # the hook path: the hook goes on a private copy
    if progress is not None:
        progress(_("feature pass in {runtime}").format(runtime=rt.runtime), 0.0)
    f_train, _unused = features_and_logits(model, data, "train", progress=part(0.0, share), cancel=cancel,
                                     runner=rt.runner)
    f_test, _unused = features_and_logits(model, data, "test", progress=part(share, 0.8), cancel=cancel, runner=rt.runner)
    if progress is not None:
        progress(_("label errors (cross-validated logistic regression), mismatch, near-duplicates"), 0.82)
    ytr = data.y_train.numpy()
    sub = subsample(ytr, max_label or len(ytr), seed)  # by default every training sample is checked
    # the folds' fits take seconds: in this process (starting Ray would cost more than it saves)
    probs = crossval_probs_features(f_train[sub], ytr[sub], seed=seed, progress=part(0.82, 0.9), cancel=cancel,
                                    use_ray=False)
    issues = find_label_issues(ytr[sub], probs)
    issues = replace(issues, method=label_method_text(len(sub), len(ytr)))
    flagged = sub[issues.indices]
    nb, nb_sim = class_neighbours(f_train, ytr, flagged, issues.suggested, k=NEIGHBOURS, exclude=flagged)
    dom = domain_classifier(f_train, f_test, max_per_split=max_domain, seed=seed)
    top = np.argsort(-dom.test_score, kind="stable")[:MISMATCH_SHOWN]
    tc, sc = data.class_counts("train"), data.class_counts("test")
    return DataReport(train_counts=tc, test_counts=sc, imbalance=imbalance_ratio(tc), shift=class_shift(tc, sc),
                      pixels=pixel_stats(data), labels=issues, label_subset=sub, domain_auc=dom.auc,
                      duplicates=near_duplicates(data, f_train, f_test, dup_threshold, dup_pixel_threshold),
                      seconds=time.perf_counter() - t0, label_neighbours=nb, label_neighbour_similarity=nb_sim,
                      label_suggested_prob=probs[issues.indices, issues.suggested].astype(np.float64),
                      mismatch_test_index=dom.test_index[top], mismatch_score=dom.test_score[top].astype(np.float64),
                      version=REPORT_VERSION, runtime=rt.summary)


def label_method_text(checked: int, total: int) -> str:
    """How the data checks found the suspected label errors, in the current language."""
    return _("penultimate features + 5-fold logistic regression on {checked} of {total} training samples").format(
        checked=num(checked, ",d"), total=num(total, ",d"))


def shown_label_method(checked: int, stored: str, total: int) -> str:
    """The label check's method for a reader: rebuilt from the numbers in the reader's language when samples were
    checked (the stored text is in the language of the job that made it), else the stored text."""
    return label_method_text(int(checked), total) if checked else _(stored or "")


def features_runtime(model: nn.Module, data: ImageDataset, images: int, min_images: int | None = None
                     ) -> tuple[bulk.BulkRuntime, nn.Module | None]:
    """The runtime of the penultimate-feature pass: it runs the model's features-and-logits copy
    (:func:`diagnostics.mismatch.feature_model`); eager PyTorch with a hook when the head is not the model's
    last operation."""
    shape = tuple(data.x_train.shape[1:])
    fm = feature_model(model, shape)
    if fm is None:
        return bulk.BulkRuntime(None, bulk.EAGER, _("eager PyTorch (the head is not the model's last operation)")), None
    return bulk.bulk_runtime(fm, data, "train", images, min_images=min_images), fm


def class_neighbours(features: np.ndarray, labels: np.ndarray, query: np.ndarray, target: np.ndarray, k: int = 5,
                     exclude: np.ndarray | None = None, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, its ``k`` nearest rows labelled ``target[i]`` (cosine similarity of centred features).

    Args:
        features: ``N×D`` features of the whole split.
        labels: ``N`` labels.
        query: Indices of the query rows.
        target: The class to search in, per query.
        k: Neighbours per query (fewer candidates: padded with index -1 and similarity 0).
        exclude: Rows never returned (the query rows themselves, other suspects).
        chunk: Queries per matrix product.

    Returns:
        ``len(query)×k`` indices and similarities, most similar first.
    """
    import torch

    f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    f = f - f.mean(dim=0, keepdim=True)  # post-ReLU features are all positive: centre them (see nearest_train)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    query, target = np.asarray(query, dtype=np.int64), np.asarray(target, dtype=np.int64)
    out_i = np.full((len(query), k), -1, dtype=np.int64)
    out_s = np.zeros((len(query), k), dtype=np.float64)
    banned = np.zeros(len(labels), dtype=bool)
    banned[np.asarray(exclude if exclude is not None else query, dtype=np.int64)] = True
    banned[query] = True
    for c in np.unique(target):
        cand = np.flatnonzero((labels == c) & ~banned)
        rows = np.flatnonzero(target == c)
        if not len(cand):
            continue
        kk = min(k, len(cand))
        for s in range(0, len(rows), chunk):
            r = rows[s:s + chunk]
            sims = f[torch.from_numpy(query[r])] @ f[torch.from_numpy(cand)].T
            v, i = sims.topk(kk, dim=1)
            out_i[r, :kk] = cand[i.numpy()]
            out_s[r, :kk] = v.numpy()
    return out_i, out_s


DECISIONS = ("label wrong", "label right", "unsure")  # identifiers (stored, in CSVs); shown through DECISION_LABELS
DECISION_LABELS = {"label wrong": N_("label wrong"), "label right": N_("label right"), "unsure": N_("unsure")}


def label_error_rows(rep: DataReport, classes: list[str]) -> list[dict]:
    """One dict per suspected label error, most suspicious first (what the gallery and the CSVs show)."""
    li = rep.labels
    has = rep.has_galleries
    rows = []
    for pos, (idx, g, s, sc) in enumerate(zip(rep.label_train_index, li.given, li.suggested, li.self_confidence)):
        rows.append({"train_index": int(idx), "given": int(g), "suggested": int(s), "given_class": classes[int(g)],
                     "suggested_class": classes[int(s)], "self_confidence": float(sc),
                     "p_suggested": float(rep.label_suggested_prob[pos]) if has else float("nan"),
                     "neighbours": [int(j) for j in rep.label_neighbours[pos] if j >= 0] if has else [],
                     "neighbour_similarity": [float(v) for j, v in zip(rep.label_neighbours[pos],
                                                                        rep.label_neighbour_similarity[pos])
                                              if j >= 0] if has else []})
    return rows


def decisions_csv(rows: list[dict], decisions: dict[int, str]) -> str:
    """The samples a user decided on (train index → one of :data:`DECISIONS`), in gallery order, as CSV."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["train_index", "given_label", "suggested_label", "given_class", "suggested_class",
                "self_confidence", "p_suggested", "decision"])
    for r in rows:
        d = decisions.get(r["train_index"])
        if d in DECISIONS:
            w.writerow([r["train_index"], r["given"], r["suggested"], r["given_class"], r["suggested_class"],
                        f"{r['self_confidence']:.6f}", f"{r['p_suggested']:.6f}", d])
    return buf.getvalue()


def relabelling_csv(rows: list[dict], decisions: dict[int, str]) -> str:
    """The suggested relabelling of the samples marked "label wrong": train index, old and new label, as CSV."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["train_index", "given_label", "new_label", "given_class", "new_class"])
    for r in rows:
        if decisions.get(r["train_index"]) == DECISIONS[0]:
            w.writerow([r["train_index"], r["given"], r["suggested"], r["given_class"], r["suggested_class"]])
    return buf.getvalue()


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


# --- the stored report of the shared data-checks job --------------------------------------------------

def data_checks_key(model_id: str, data_id: str) -> str:
    """Workspace run key of the full data-check report of a model on a dataset."""
    return safe_key("datareport", model_id, data_id)


def load_data_report(ws: Workspace, model_id: str, data_id: str) -> DataReport | None:
    payload = ws.load_run(data_checks_key(model_id, data_id))
    if not payload:
        return None
    try:
        return DataReport.from_dict(payload)
    except (KeyError, TypeError, ValueError):
        return None
