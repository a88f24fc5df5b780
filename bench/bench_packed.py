"""The demo model's smallest packed artifact at ≤ 1 point accuracy drop (prune + cluster + quantize).

Runs a few pipelines on the workspace's demo CNN (Fashion-MNIST when installed, else digits) through
``compression.variant.make_variant`` into a throwaway workspace, so every size is the size of a real file
that loads back (the packed format: sparse positions, cluster indices or b-bit integers). Prints a
markdown table: accuracy and its drop, bytes on disk and gzipped, and the ratio to the dense fp32
safetensors file of the base model.

    python bench/bench_packed.py [--finetune-epochs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compression  # noqa: E402,F401  (registers the methods)
from compression.registry import config_from_dict  # noqa: E402
from compression.variant import make_variant  # noqa: E402
from nnlab.base import ensure_demo  # noqa: E402
from nnlab.data.sets import load_fashion_mnist  # noqa: E402
from nnlab.workspace import Workspace  # noqa: E402


def pipelines(epochs: int) -> dict[str, list[dict]]:
    prune = {"method": "prune-unstructured", "scope": "global", "finetune_epochs": epochs}
    cluster = {"method": "cluster", "init": "linear", "finetune_epochs": 0}
    tuned = {**cluster, "finetune_epochs": 1}
    return {
        "prune 90 % → cluster k=16": [{**prune, "sparsity": 0.9}, {**cluster, "k": 16}],
        "prune 90 % → cluster k=16, centroids fine-tuned 1 epoch": [{**prune, "sparsity": 0.9}, {**tuned, "k": 16}],
        f"prune 90 % ({2 * epochs} epochs) → cluster k=16, centroids fine-tuned": [
            {**prune, "sparsity": 0.9, "finetune_epochs": 2 * epochs}, {**tuned, "k": 16}],
        "prune 95 % → cluster k=16, centroids fine-tuned": [{**prune, "sparsity": 0.95}, {**tuned, "k": 16}],
        "cluster k=16 alone": [{**cluster, "k": 16}],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist()
    model, base, _ = ensure_demo(data, Workspace())
    dense = base.size_bytes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(tmp)
        for name, steps in pipelines(args.finetune_epochs).items():
            rec = make_variant(model, base.id, base.arch, [config_from_dict(s) for s in steps], data, ws,
                               latency_repeats=3)
            rows.append((name, rec))
    print(f"### Smallest packed artifact (demo CNN on {data.name}; base {base.accuracy:.2%}, dense fp32 "
          f"safetensors {dense:,} B; prune fine-tuning {args.finetune_epochs} epochs)\n")
    print("| pipeline | accuracy | drop (pt) | packed bytes | gzipped | × smaller than fp32 | within 1 pt |")
    print("|---|---:|---:|---:|---:|---:|:-:|")
    best = None
    for name, rec in rows:
        drop = (base.accuracy - rec.accuracy) * 100
        ok = drop <= 1.0
        if ok and (best is None or rec.size_bytes < best[1].size_bytes):
            best = (name, rec)
        print(f"| {name} | {rec.accuracy:.2%} | {drop:+.2f} | {rec.size_bytes:,} | {rec.size_gzip_bytes:,} | "
              f"{dense / rec.size_bytes:.1f}× | {'yes' if ok else 'no'} |")
    if best:
        print(f"\nSmallest within 1 point: **{best[0]}**, {best[1].size_bytes:,} B, "
              f"**{dense / best[1].size_bytes:.1f}× smaller** than the fp32 file (target ≥ 30×).")
    else:
        print("\nNo pipeline stayed within 1 point of the base accuracy.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
