"""Benchmark: the Data checks page's default label check on Fashion-MNIST with 3 % of the training labels flipped.

1,800 training labels (3 %, seed 0) are moved to another class at random; the demo CNN is trained on the noisy
labels with nnlab's demo config; the data checks run as the page runs them (penultimate features, 5-fold
logistic regression over every training image, confident learning). Printed: recall and precision of the
flagged samples against the flips. Goal: recall ≥ 70 %, precision ≥ 60 %.

Run: ``python bench/bench_labels.py [--fraction 0.03] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics.datacheck import data_report  # noqa: E402
from nnlab.base import demo_config  # noqa: E402
from nnlab.data.sets import load_dataset  # noqa: E402
from nnlab.models.randinit import seeded_init  # noqa: E402
from nnlab.models.registry import create_model  # noqa: E402
from nnlab.train import train_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=0.03)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d = load_dataset("fashion-mnist")
    y = d.y_train.numpy().copy()
    rng = np.random.default_rng(0)
    flip = rng.choice(len(y), int(args.fraction * len(y)), replace=False)
    y[flip] = (y[flip] + rng.integers(1, d.num_classes, len(flip))) % d.num_classes
    noisy = dataclasses.replace(d, id=f"{d.id}-noisy", y_train=torch.from_numpy(y))
    c, h, w = d.input_shape
    model = seeded_init(create_model("demo-cnn", c, d.num_classes, (h, w)), 0)
    t0 = time.perf_counter()
    hist = train_model(model, noisy, demo_config(noisy))
    train_s = time.perf_counter() - t0
    model = model.cpu().eval()
    t0 = time.perf_counter()
    rep = data_report(model, noisy)
    check_s = time.perf_counter() - t0
    found = set(rep.label_subset[rep.labels.indices].tolist())
    tp = len(found & set(flip.tolist()))
    recall, precision = tp / len(flip), tp / max(1, len(found))
    print(f"{d.name} ({d.source}): {len(flip):,} of {len(y):,} training labels flipped (seed 0); demo CNN trained "
          f"on the noisy labels in {train_s:.0f} s (test accuracy {hist[-1].test_acc:.2%}); data checks "
          f"{check_s:.0f} s; {rep.labels.checked:,} labels checked.\n")
    print("| flagged | true flips flagged | recall | precision |")
    print("|---:|---:|---:|---:|")
    print(f"| {len(found):,} | {tp:,} | **{recall:.1%}** | **{precision:.1%}** |")
    print(f"\nGoal: recall ≥ 70 % ({'OK' if recall >= 0.7 else 'missed'}), precision ≥ 60 % "
          f"({'OK' if precision >= 0.6 else 'missed'}).")


if __name__ == "__main__":
    main()
