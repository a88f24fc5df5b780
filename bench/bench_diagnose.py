"""Benchmark: the full error analysis over the Fashion-MNIST test set as a ratio to a bare inference pass.

"Bare inference" is the model's batched forward pass over the 10 000 test images (logits only).
"Full error analysis" is everything the Errors-by-class and Worst-errors pages compute: the evaluation pass
(logits, softmax, per-sample loss, predictions), per-class precision/recall/F1, the confusion matrix, the
ranked confused pairs, and the three worst-error orders (loss, wrong confidence, margin). Both are timed in
the same process, interleaved, after a warm-up; the table gives medians over the repeats. Target ≤ 1.2.

The model is the demo CNN, quickly trained (``--train-samples`` images for one epoch; 0 = untrained): the
timing does not depend on the weights, only the ranking does.

Run: ``python bench/bench_diagnose.py [--repeats 7] [--threads 2] [--train-samples 6000]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics import errors  # noqa: E402
from diagnostics.mismatch import features_and_logits  # noqa: E402
from nnlab.data.sets import load_fashion_mnist  # noqa: E402
from nnlab.evaluate import evaluate, predict_logits, result_from_logits  # noqa: E402
from nnlab.models.registry import create_model  # noqa: E402
from nnlab.train import TrainConfig, train_model  # noqa: E402


def full_analysis(model, data) -> errors.ErrorAnalysis:
    ev = evaluate(model, data, "test")
    return errors.analyze(ev.probs, ev.losses, ev.labels, data.num_classes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-samples", type=int, default=6000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(allow_download=False)
    if data.fallback_reason:
        print(f"NOTE: {data.fallback_reason}")
    c, h, w = data.input_shape
    torch.manual_seed(0)
    model = create_model("demo-cnn", c, data.num_classes, (h, w))
    if args.train_samples:
        idx = np.arange(min(args.train_samples, len(data.y_train)))
        train_model(model, data, TrainConfig(epochs=1, lr=4e-3, batch_size=128, eval_test=False), indices=idx,
                    device=torch.device("cpu"))
    model = model.cpu().eval()

    bare = lambda: predict_logits(model, data, "test", device=torch.device("cpu"))  # noqa: E731
    full = lambda: full_analysis(model, data)  # noqa: E731
    logits = bare()
    labels = data.y_test.numpy()

    def numpy_only() -> errors.ErrorAnalysis:
        ev = result_from_logits(logits, labels)
        return errors.analyze(ev.probs, ev.losses, ev.labels, data.num_classes)

    def with_features() -> tuple:
        f, lg = features_and_logits(model, data, "test")
        ev = result_from_logits(lg, labels)
        return f, errors.analyze(ev.probs, ev.losses, ev.labels, data.num_classes)

    cases = {"bare inference (logits)": bare, "full error analysis": full,
             "full error analysis + penultimate features (data checks)": with_features,
             "analysis without the model pass (numpy only)": numpy_only}
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():  # interleaved, so load changes hit all cases alike
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["bare inference (logits)"])
    an = full()
    how = "untrained" if not args.train_samples else f"1 epoch on {args.train_samples:,} training images"
    print(f"\n{len(labels):,} {data.name} test images, demo CNN ({how}, "
          f"test error {an.error:.2%}), CPU, {args.threads} threads, {args.repeats} repeats after a warm-up.\n")
    print("| computation | median s | min s | max s | ratio to bare inference |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {min(ts):.3f} | {max(ts):.3f} | {med / base:.3f} |")
    ratio = statistics.median(times["full error analysis"]) / base
    verdict = "OK" if ratio <= 1.2 else "ABOVE TARGET"
    print(f"\nfull error analysis / bare inference = {ratio:.3f} (target ≤ 1.2): {verdict}")


if __name__ == "__main__":
    main()
