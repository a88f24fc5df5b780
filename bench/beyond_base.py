"""Train the base model of ``bench_runtimes_beyond.py`` (ResNet-18 at 224 on its coloured shapes) and save it.

On a 2-core CPU, ResNet-18 from random weights stays at chance on this data within a practical budget (2,000
images, 6 epochs at 112 px + 1 at 224 px: 27.5 % on 4 classes, 22 minutes). This script trains the same
architecture on the same seeded images with nnlab's training loop on any device (a GPU: ``NNLAB_DEVICE=cuda``)
and writes the weights as a state dict plus a JSON note; ``bench_runtimes_beyond.py --base-weights FILE`` then
runs the search and the peers on the CPU.

    python bench/beyond_base.py OUT.pt [--train-per-class 500] [--test-per-class 100] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from beyond_data import CLASSES, SIZE, shapes_dataset  # noqa: E402

from nnlab import config  # noqa: E402
from nnlab.models.registry import create_model  # noqa: E402
from nnlab.train import TrainConfig, train_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = shapes_dataset(args.train_per_class, args.test_per_class)
    gen_s = time.perf_counter() - t0
    torch.manual_seed(0)  # a benchmark script, not library code
    model = create_model("resnet18", 3, len(CLASSES), (SIZE, SIZE))
    device = config.device()
    t0 = time.perf_counter()
    hist = train_model(model, data, TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                                optimizer="adamw", schedule="onecycle", flip=True, crop=0.125),
                       device=device)
    train_s = time.perf_counter() - t0
    last = hist[-1].to_dict()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, args.out)
    note = {"arch": "resnet18", "classes": list(CLASSES), "size": SIZE, "train_per_class": args.train_per_class,
            "test_per_class": args.test_per_class, "epochs": args.epochs, "lr": args.lr,
            "batch_size": args.batch_size, "device": str(device),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "train_s": round(train_s, 1), "generate_s": round(gen_s, 1),
            "history": [h.to_dict() for h in hist], "test_acc": last.get("test_acc")}
    args.out.with_suffix(".json").write_text(json.dumps(note, indent=1))
    for h in note["history"]:
        print(h)
    print(f"trained {args.epochs} epochs in {train_s:.0f} s on {note['device_name']}: test accuracy "
          f"{last.get('test_acc')}")


if __name__ == "__main__":
    main()
