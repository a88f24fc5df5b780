"""Benchmark: training ResNet-18 at 224 on a generated ImageFolder, through the job the Train page submits.

A folder of ``--images`` JPEGs at 256 px (10 classes of coloured shapes, ``nnlab.data.synthetic``) is seen through
ResNet-18's own preprocessing (shorter side 256, centre crop 224, ImageNet mean/std); the ``train-model`` job
(the one the *Train or fine-tune* page submits, same parameters) trains torchvision's ResNet-18 from
scratch (seeded) with AdamW, a one-cycle schedule, flips and crops, and stores the model. Printed: test
accuracy after each epoch, seconds per epoch, and the stored model's test accuracy.

Run: ``python bench/bench_finetune.py [--images 1500] [--epochs 4] [--threads 2] [--batch 32] [--lr 2e-3]``
(``NNLAB_DEVICE=cuda`` trains on a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--arch", default="tv:resnet18")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nnlab-bench-finetune-"))
    os.environ["NNLAB_WORKSPACE"] = str(tmp / "ws")
    os.environ["NNLAB_ALLOWED_ROOTS"] = os.pathsep.join(filter(None, [os.environ.get("NNLAB_ALLOWED_ROOTS"), str(tmp)]))
    import torch

    from nnlab import config
    from nnlab.data.synthetic import make_shapes_folder
    from nnlab.jobs import manager as jobs
    from nnlab.jobs import refs
    from nnlab.jobs.kinds import trained_model_id
    from nnlab.models.registry import default_preprocessing
    from nnlab.train import TrainConfig

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    folder = make_shapes_folder(tmp / "shapes", per_class=args.images // 10, size=256)
    pre = default_preprocessing(args.arch)
    dref = refs.data_ref("imagefolder", str(folder), pre.to_dict())
    data = refs.load_data(dref, tmp / "ws")
    prep_s = time.perf_counter() - t0
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch, optimizer="adamw",
                      schedule="onecycle", flip=True, crop=0.125).to_dict()
    init = {"kind": "scratch"}
    params = {"data": dref, "arch": args.arch, "init": init, "config": cfg,
              "model_id": trained_model_id(args.arch, data.id, init, cfg), "name": ""}
    t0 = time.perf_counter()
    job = jobs.submit("train-model", params, owner="bench", root=tmp / "ws")
    last = ""
    while not job.wait(timeout=5):
        snap = job.snapshot()
        line = f"{snap['fraction']:.0%} {snap['message']}"
        if line != last:
            print(line, file=sys.stderr, flush=True)
            last = line
    seconds = time.perf_counter() - t0
    if job.status != jobs.DONE:
        raise SystemExit(f"the training job ended {job.status}: {job.error}")
    res = job.result
    print(f"{args.arch} from scratch at 224 on {len(data.y_train):,} training / {len(data.y_test):,} test images "
          f"(generated shapes, 256 px JPEGs; cache built in {prep_s:.0f} s), device {config.device()}, "
          f"{args.threads} threads, batch {args.batch}, AdamW lr {args.lr:g}, one-cycle, flips and crops; "
          f"through the Train page's job.\n")
    print("| epoch | train loss | train acc | test acc | seconds |")
    print("|---:|---:|---:|---:|---:|")
    for e in res["history"]:
        print(f"| {e['epoch']} | {e['train_loss']:.3f} | {e['train_acc']:.2%} | {e.get('test_acc', float('nan')):.2%} "
              f"| {e.get('seconds', float('nan')):.0f} |")
    print(f"\nStored model: test accuracy **{res['accuracy']:.2%}** after {args.epochs} epochs; training "
          f"{res['seconds']:.0f} s, job {seconds:.0f} s in all (measurement included).")


if __name__ == "__main__":
    main()
