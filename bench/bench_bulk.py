"""Benchmark: bulk passes in the runtime nnlab chooses against eager PyTorch, and the full data checks.

1. The evaluation pass over a split, streamed from the data cache in batches of 256, in eager PyTorch and
   in the runtime :func:`nnlab.runtimes.bulk.bulk_runtime` picks (verified against PyTorch first), interleaved,
   medians over ``--repeats``: the demo CNN over Fashion-MNIST's 10,000 test images, and ResNet-18 (random
   weights) at 224 over a generated JPEG folder (``--resnet-images`` images, ImageNet preprocessing).
   Goal: bulk ÷ eager ≤ 0.5.
2. The data checks end to end over all 70,000 Fashion-MNIST images (feature pass over both splits, label
   issues by cross-validated logistic regression on every training image, mismatch, near-duplicates, pixel
   statistics), as the Data checks page runs them. Goal: ≥ 3,400 images/s.

The model of 1. and 2. is the workspace's demo CNN when it exists, else a demo CNN trained for one epoch on
6,000 images (the timing does not depend on the weights).

Run: ``python bench/bench_bulk.py [--threads 2] [--repeats 3] [--resnet-images 500]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics.datacheck import data_report  # noqa: E402
from nnlab.data.preprocess import imagenet  # noqa: E402
from nnlab.data.sets import load_dataset  # noqa: E402
from nnlab.evaluate import predict_logits  # noqa: E402
from nnlab.models.registry import create_model  # noqa: E402
from nnlab.runtimes import bulk  # noqa: E402


def demo_model(data) -> tuple[torch.nn.Module, str]:  # noqa: ANN001
    from nnlab.jobs import refs

    mid = f"demo-cnn-{data.id}"
    try:
        if refs.has_model(mid):
            return refs.load_model(mid)[0].cpu().eval(), f"workspace model {mid}"
    except Exception:  # noqa: BLE001 - any problem with the stored model: train a quick one
        pass
    from nnlab.train import TrainConfig, train_model

    c, h, w = data.input_shape
    model = create_model("demo-cnn", c, data.num_classes, (h, w), seed=0)
    train_model(model, data, TrainConfig(epochs=1, lr=4e-3, batch_size=128, eval_test=False),
                indices=np.arange(6000), device=torch.device("cpu"))
    return model.cpu().eval(), "demo CNN, 1 epoch on 6,000 images"


def compare(name: str, model: torch.nn.Module, data, split: str, repeats: int, batch: int) -> dict:  # noqa: ANN001
    n = len(data.labels(split))
    t0 = time.perf_counter()
    rt = bulk.bulk_runtime(model, data, split, min_images=0, batch=batch)
    choose_s = time.perf_counter() - t0
    runner = rt.runner
    eager_s, fast_s = [], []
    ref = fast = None
    for _ in range(repeats):
        t = time.perf_counter()
        ref = predict_logits(model, data, split, batch_size=batch)
        eager_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        fast = predict_logits(model, data, split, batch_size=batch, runner=runner)
        fast_s.append(time.perf_counter() - t)
    agree = float((ref.argmax(1) == fast.argmax(1)).mean())
    diff = float(np.abs(ref - fast).max())
    e, f = statistics.median(eager_s), statistics.median(fast_s)
    return {"name": name, "images": n, "runtime": rt.runtime, "eager_ips": n / e, "bulk_ips": n / f,
            "ratio": f / e, "agree": agree, "diff": diff, "choose_s": choose_s, "summary": rt.summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--resnet-images", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    fashion = load_dataset("fashion-mnist")
    model, how = demo_model(fashion)
    rows = [compare("demo CNN, Fashion-MNIST test (1×28×28)", model, fashion, "test", args.repeats, args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        from nnlab.data.synthetic import make_shapes_folder

        os.environ["NNLAB_ALLOWED_ROOTS"] = os.pathsep.join(filter(None, [os.environ.get("NNLAB_ALLOWED_ROOTS"), tmp]))

        folder = make_shapes_folder(Path(tmp) / "shapes", per_class=max(1, args.resnet_images // 10), size=256)
        shapes = load_dataset("imagefolder", folder, imagenet(), workspace=Path(tmp) / "ws")
        resnet = create_model("tv:resnet18", 3, shapes.num_classes, (224, 224), seed=0).eval()
        rows.append(compare("ResNet-18, generated JPEGs at 224 (train split)", resnet, shapes, "train",
                            args.repeats, 64))
    t0 = time.perf_counter()
    rep = data_report(model, fashion)
    checks_s = time.perf_counter() - t0
    n_all = len(fashion.y_train) + len(fashion.y_test)

    print(f"{args.threads} threads, batches of {args.batch} (ResNet-18: 64) streamed from the data cache, "
          f"medians of {args.repeats} interleaved passes; model: {how}.\n")
    print("| pass | images | runtime chosen | eager img/s | bulk img/s | bulk ÷ eager | top-1 agreement | "
          "max abs Δlogit | choosing took |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['images']:,} | {r['runtime']} | {r['eager_ips']:,.0f} | {r['bulk_ips']:,.0f} | "
              f"{r['ratio']:.2f} | {r['agree']:.2%} | {r['diff']:.1e} | {r['choose_s']:.1f} s |")
    print()
    for r in rows:
        ok = "OK" if r["ratio"] <= 0.5 else "missed"
        print(f"- {r['name']}: bulk ÷ eager = {r['ratio']:.2f} (goal ≤ 0.5): {ok}. Choice: {r['summary']}")
    ips = n_all / checks_s
    print(f"\nFull data checks over all {n_all:,} Fashion-MNIST images: {checks_s:.1f} s end to end = "
          f"**{ips:,.0f} images/s** (goal ≥ 3,400: {'OK' if ips >= 3400 else 'missed'}); "
          f"{rep.labels.checked:,} training labels checked, {len(rep.labels.indices):,} flagged; feature pass: "
          f"{rep.runtime}.")
    print(f"\n_(bench total {time.perf_counter() - t_all:.0f} s)_")


if __name__ == "__main__":
    main()
