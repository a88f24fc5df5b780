"""Honest numbers: each base as fp32 in every runtime, each default variant with both speed-ups.

For ResNet-18 and MobileNetV2 at 224 px (torchvision, 10 classes, seeded random weights, batch-norm statistics
re-estimated on random inputs, as in bench_runtimes), nnlab's own path: ``profile_model`` times the base as fp32
in eager PyTorch, ONNX Runtime and OpenVINO (one interleaved run per batch size); ``make_variant`` makes the
lab's default int8, channel pruning to 50 % of the MACs, and the pipeline of both, and times each beside the
base in the variant's runtime in one interleaved run. The table gives the speed-up against the base in the same
runtime and, labelled, against the base's fastest fp32 runtime. Accuracy is not meaningful (random weights and
data) and is not shown.

    python bench/bench_honest.py [--threads 2] [--models resnet18,mobilenet_v2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compression  # noqa: E402,F401 - registers the methods
from bench.bench_runtimes import _cpu_name, build_model, fake_data, stdout_to_stderr  # noqa: E402
from compression.defaults import default_config  # noqa: E402
from compression.registry import config_from_dict  # noqa: E402
from compression.variant import make_variant  # noqa: E402
from nnlab.base import profile_model  # noqa: E402
from nnlab.measure import HARNESS, speedups  # noqa: E402
from nnlab.workspace import Workspace  # noqa: E402

VARIANTS = {
    "int8 (lab default)": lambda n: [default_config("int8", n)],
    "channel pruning 50 % MACs": lambda n: [config_from_dict({"method": "prune-channels", "amount": 0.5})],
    "pipeline: pruning 50 % → int8": lambda n: [config_from_dict({"method": "prune-channels", "amount": 0.5}),
                                                default_config("int8", n)],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = fake_data(64, n_test=32, dataset_id="honest224")
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, stdout_to_stderr():
        ws = Workspace(tmp)
        for arch in args.models.split(","):
            model = build_model(arch, num_classes=10)
            base = profile_model(model, data, f"{arch}-honest", arch, arch, None)
            for rt in sorted(base.latencies, key=lambda k: base.latencies[k]["1"]["median_ms"]):
                b1, b32 = base.latencies[rt]["1"], base.latencies[rt]["32"]
                fast = " (fastest fp32)" if rt == base.latency["1"]["runtime"] else ""
                rows.append(f"| {arch} | base fp32{fast} | {rt} | {b1['median_ms']:.2f} | {b32['median_ms']:.1f} "
                            f"| — | — | 1.00× vs eager: {base.latencies['pytorch-eager-fp32-cpu']['1']['median_ms'] / b1['median_ms']:.2f}× |")
            for label, configs in VARIANTS.items():
                print(f"{arch}: {label}", file=sys.stderr, flush=True)
                try:
                    v = make_variant(model, base.id, arch, configs(len(data.y_train)), data, ws, name=label)
                except Exception as exc:  # noqa: BLE001 - a failed variant is a row, not a crash
                    rows.append(f"| {arch} | {label} | failed: {type(exc).__name__}: {str(exc)[:80]} | | | | | |")
                    continue
                s1, s32 = speedups(v, base, 1), speedups(v, base, 32)
                bl = v.baseline["latency"]["1"]["median_ms"] if v.baseline.get("latency") else float("nan")
                rows.append(f"| {arch} | {label} | {v.latency['1']['runtime']} | {v.latency_ms(1):.2f} "
                            f"| {v.latency_ms(32):.1f} | {bl:.2f} ({v.baseline.get('runtime', '')}) "
                            f"| **{s1['same_runtime']:.2f}×** (b32 {s32['same_runtime']:.2f}×) "
                            f"| {s1['vs_fastest_fp32']:.2f}× vs {s1['fastest_fp32_runtime']} |")
    seconds = time.perf_counter() - t0
    print("### Honest numbers at 224 px: the base in every runtime, each default variant with both speed-ups\n")
    print(f"CPU: {_cpu_name()}, {args.threads} thread(s), harness `{HARNESS}` (interleaved rounds, medians; "
          "random weights with re-estimated batch-norm statistics, 10 classes). *Same runtime*: the variant and "
          "the base as fp32 in the variant's runtime, timed in one interleaved run. *vs fastest fp32*: against "
          "the base's fastest fp32 runtime from its own run (labelled). Batch 1 unless stated.\n")
    print("| model | model or variant | runtime | b1 (ms) | b32 (ms) | base in that runtime, b1 (ms) "
          "| speed-up, same runtime | speed-up vs base's fastest fp32 |")
    print("|---|---|---|---:|---:|---|---|---|")
    for r in rows:
        print(r)
    print(f"\nTotal {seconds:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
