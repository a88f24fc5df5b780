"""Channel pruning at 50 % MACs on the demo CNN: latency ratio and accuracy drop, measured in one run.

The base model is the workspace's demo CNN for Fashion-MNIST (trained and cached by ``ensure_demo`` when
absent; digits when Fashion-MNIST is not installed), or, with ``--subset N``, a demo CNN trained here on
the first N training images. It is channel-pruned by L2 filter norm through Torch-Pruning's dependency
graph until MACs fall to half, then fine-tuned. Latency is eager PyTorch on the CPU with threads fixed,
base and pruned timed round-robin (each round times both, so load drifts hit both alike), medians over
the rounds. Prints a markdown table.

    python bench/bench_pruning.py [--threads 1] [--rounds 30] [--finetune-epochs 2] [--subset 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression.pruning import PruneChannelsConfig  # noqa: E402
from compression.registry import CompressContext, apply  # noqa: E402
from nnlab.base import ensure_demo  # noqa: E402
from nnlab.data.sets import ImageDataset, load_fashion_mnist  # noqa: E402
from nnlab.evaluate import evaluate  # noqa: E402
from nnlab.measure import count_macs, count_parameters, interleaved_latency  # noqa: E402
from nnlab.models.registry import create_model  # noqa: E402
from nnlab.runtimes.torch_eager import TorchRunner  # noqa: E402
from nnlab.train import TrainConfig, train_model  # noqa: E402
from nnlab.workspace import Workspace  # noqa: E402


def side_by_side(models: dict[str, torch.nn.Module], shape: tuple[int, ...], batch: int, rounds: int,
                 per_round: int) -> dict[str, float]:
    """Median ms per call of each model, timed by nnlab's one harness (interleaved rounds)."""
    x = torch.randn(batch, *shape)
    runners = {k: TorchRunner(m, torch.get_num_threads(), k) for k, m in models.items()}
    return {k: v.median_ms for k, v in interleaved_latency(runners, x, rounds=rounds, per_round=per_round).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--amount", type=float, default=0.5, help="fraction of MACs removed")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--subset", type=int, default=0, help="train a fresh base on N images (0: workspace demo)")
    ap.add_argument("--epochs", type=int, default=3, help="base epochs with --subset")
    ap.add_argument("--scope", default="layer", choices=("layer", "global"))
    ap.add_argument("--round-to", type=int, default=1, help="channel counts rounded to multiples of this")
    args = ap.parse_args()
    t0 = time.time()
    data = load_fashion_mnist(allow_download=False)
    c, h, w = data.input_shape
    if args.subset:  # base training and fine-tuning both see the same first N training images
        n = min(args.subset, len(data.y_train))
        data = ImageDataset(id=f"{data.id}-first{n}", name=data.name, source=data.source, classes=data.classes,
                            x_train=data.x_train[:n], y_train=data.y_train[:n], x_test=data.x_test,
                            y_test=data.y_test, mean=data.mean, std=data.std)
        torch.manual_seed(0)
        base = create_model("demo-cnn", c, data.num_classes, (h, w))
        train_model(base, data, TrainConfig(epochs=args.epochs, lr=4e-3, batch_size=128, eval_test=False))
        base = base.cpu().eval()
        origin = f"demo CNN trained here on the first {n} images, {args.epochs} epochs"
    else:
        base, rec, _ = ensure_demo(data, Workspace())
        origin = f"workspace demo model {rec.id}"
    cfg = PruneChannelsConfig(target="macs", amount=args.amount, norm="l2", scope=args.scope, round_to=args.round_to)
    ctx = CompressContext(data=data, workdir=Path("/tmp"), arch="demo-cnn")
    pruned = apply(base, cfg, ctx).model
    acc_pruned = evaluate(pruned, data).accuracy
    tuned = apply(base, cfg.replace(finetune_epochs=args.finetune_epochs), ctx).model if args.finetune_epochs \
        else pruned
    acc_base, acc_tuned = evaluate(base, data).accuracy, evaluate(tuned, data).accuracy

    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        lat = {b: side_by_side({"base": base.eval(), "pruned": tuned.eval()}, data.input_shape, b, args.rounds,
                               10 if b == 1 else 3) for b in (1, 32)}
    finally:
        torch.set_num_threads(old)
    macs_b, macs_p = count_macs(base, data.input_shape), count_macs(tuned, data.input_shape)
    params_b, params_p = count_parameters(base)[0], count_parameters(tuned)[0]
    print(f"### Channel pruning to {1 - args.amount:.0%} MACs ({data.name}, {origin}; {args.scope} L2, "
          f"channels rounded to {args.round_to})\n")
    print("| | MACs | params | top-1 | latency b=1 (ms) | latency b=32 (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| fp32 base | {macs_b:,} | {params_b:,} | {acc_base:.4f} | {lat[1]['base']:.3f} | {lat[32]['base']:.3f} |")
    print(f"| pruned, no fine-tuning | {macs_p:,} | {params_p:,} | {acc_pruned:.4f} | | |")
    print(f"| pruned + {args.finetune_epochs} epochs fine-tuning | {macs_p:,} | {params_p:,} | {acc_tuned:.4f} | "
          f"{lat[1]['pruned']:.3f} | {lat[32]['pruned']:.3f} |")
    print(f"| **ratio / drop** | **{macs_p / macs_b:.2f}×** | {params_p / params_b:.2f}× | "
          f"**{100 * (acc_base - acc_tuned):+.2f} pt** | **{lat[1]['pruned'] / lat[1]['base']:.2f}×** | "
          f"**{lat[32]['pruned'] / lat[32]['base']:.2f}×** |")
    print(f"\nEager PyTorch on the CPU, {args.threads} thread(s), medians of {args.rounds} round-robin rounds; "
          f"targets: ≤ 0.6× latency at ≤ 1 point drop. Total {time.time() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
