"""Benchmark: the Data checks page's default label check on Fashion-MNIST with 3 % of the training labels flipped.

1,800 training labels (3 %, seed 0) are moved to another class at random; the demo CNN is trained on the noisy
labels with nnlab's demo config; the data checks run as the page runs them (penultimate features, 5-fold
logistic regression over every training image, confident learning). Printed: recall and precision of the
flagged samples against the flips, the time of the data checks end to end and of the label check's two parts
(the out-of-fold probabilities, the confident-learning filter). Goal: recall ≥ 70 %, precision ≥ 60 %.

The trained model is kept in ``--cache`` (keyed by the fraction and the thread count), so that a rerun — the
label check before and after a change — times the same model without training it again.

Run: ``python bench/bench_labels.py [--fraction 0.03] [--threads 2] [--ray] [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics import datacheck
from nnlab.base import demo_config
from nnlab.data.sets import load_dataset
from nnlab.models.randinit import seeded_init
from nnlab.models.registry import create_model
from nnlab.train import train_model


def _timed(fn: Callable, seconds: list[float]) -> Callable:
    """``fn``, adding the time of each call to ``seconds``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t0)

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=0.03)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ray", action="store_true", help="run the folds on local Ray (default: in-process)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "nnlab-bench-labels"),
                    help="folder of the trained noisy-label model")
    args = ap.parse_args()
    if not args.ray:
        os.environ["NNLAB_RAY"] = "0"
    torch.set_num_threads(args.threads)
    d = load_dataset("fashion-mnist")
    y = d.y_train.numpy().copy()
    rng = np.random.default_rng(0)
    flip = rng.choice(len(y), int(args.fraction * len(y)), replace=False)
    y[flip] = (y[flip] + rng.integers(1, d.num_classes, len(flip))) % d.num_classes
    noisy = dataclasses.replace(d, id=f"{d.id}-noisy", y_train=torch.from_numpy(y))
    c, h, w = d.input_shape
    model = seeded_init(create_model("demo-cnn", c, d.num_classes, (h, w)), 0)
    cached = Path(args.cache) / f"{d.id}-demo-cnn-flip{args.fraction:g}-t{args.threads}.pt"
    if cached.exists():
        saved = torch.load(cached, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        train_s, test_acc, how = saved["train_s"], saved["test_acc"], f"(cached in {cached})"
    else:
        t0 = time.perf_counter()
        hist = train_model(model, noisy, demo_config(noisy))
        train_s, test_acc, how = time.perf_counter() - t0, hist[-1].test_acc, ""
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.cpu().state_dict(), "train_s": train_s, "test_acc": test_acc}, cached)
    model = model.cpu().eval()
    probs_s: list[float] = []
    filter_s: list[float] = []
    datacheck.crossval_probs_features = _timed(datacheck.crossval_probs_features, probs_s)
    datacheck.find_label_issues = _timed(datacheck.find_label_issues, filter_s)
    t0 = time.perf_counter()
    rep = datacheck.data_report(model, noisy)
    check_s = time.perf_counter() - t0
    found = set(rep.label_subset[rep.labels.indices].tolist())
    tp = len(found & set(flip.tolist()))
    recall, precision = tp / len(flip), tp / max(1, len(found))
    where = "local Ray" if args.ray else "in-process"
    print(f"{d.name} ({d.source}): {len(flip):,} of {len(y):,} training labels flipped (seed 0); demo CNN trained "
          f"on the noisy labels in {train_s:.0f} s {how} (test accuracy {test_acc:.2%}); data checks "
          f"{check_s:.1f} s on {args.threads} threads, of which out-of-fold probabilities {sum(probs_s):.1f} s "
          f"(folds {where}) and confident-learning filter {sum(filter_s):.2f} s; {rep.labels.checked:,} labels "
          f"checked.\n")
    print("| flagged | true flips flagged | recall | precision |")
    print("|---:|---:|---:|---:|")
    print(f"| {len(found):,} | {tp:,} | **{recall:.1%}** | **{precision:.1%}** |")
    print(f"\nGoal: recall ≥ 70 % ({'OK' if recall >= 0.7 else 'missed'}), precision ≥ 60 % "
          f"({'OK' if precision >= 0.6 else 'missed'}).")


if __name__ == "__main__":
    main()
