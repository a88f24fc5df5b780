"""First-click defaults of the compression lab: each method's default (compression.defaults) and the settings it
was chosen against, on the demo CNN, through the lab's own path (make_variant: apply, store, measure).

    python bench/bench_first_click.py                 # Fashion-MNIST demo (trains it once, ~3 min on 2 cores)
    python bench/bench_first_click.py --data digits   # the tests' dataset
    python bench/bench_first_click.py --only defaults # the chosen defaults alone

Prints a markdown table: accuracy, drop against the base, the page's promise, and seconds per run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compression  # noqa: E402,F401 - registers the methods
from compression import defaults  # noqa: E402
from compression.registry import config_from_dict, list_methods  # noqa: E402
from compression.variant import make_variant  # noqa: E402
from nnlab.base import ensure_demo  # noqa: E402
from nnlab.jobs import refs  # noqa: E402
from nnlab.workspace import Workspace  # noqa: E402

# The settings each default was chosen against (besides the default itself).
ALTERNATIVES: dict[str, list[dict]] = {
    "prune-unstructured": [{"sparsity": 0.5, "scope": "layer"}, {"sparsity": 0.7, "scope": "global"}],
    "prune-channels": [{}, {"amount": 0.25}],
    "cluster": [{"k": 16}],
    "quantize-weights": [{"bits": 4}],
    "qat": [{}],
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--only", choices=["all", "defaults"], default="all")
    ap.add_argument("--methods", default="", help="comma-separated subset")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = refs.load_data(refs.data_ref(args.data))  # through the data cache, as the lab's jobs read it
    ws = Workspace()
    model, base, _ = ensure_demo(data, ws)
    wanted = [m for m in args.methods.split(",") if m]
    rows = []
    for cls in list_methods():
        if wanted and cls.method not in wanted:
            continue
        fc = defaults.FIRST_CLICK.get(cls.method)
        runs = [("default", defaults.overrides(cls.method, len(data.y_train)))]
        if args.only == "all":
            runs += [("alternative", alt) for alt in ALTERNATIVES.get(cls.method, [])]
        for kind, over in runs:
            cfg = config_from_dict({"method": cls.method, **over})
            t0 = time.perf_counter()
            rec = make_variant(model, base.id, base.arch, [cfg], data, ws, latency_repeats=5)
            secs = time.perf_counter() - t0
            drop = base.accuracy - rec.accuracy
            promise = fc.max_drop if fc and kind == "default" else None
            rows.append((cls.method, kind, ", ".join(f"{k}={v}" for k, v in over.items()) or "(config defaults)",
                         rec.accuracy, drop, promise, secs))
            print(f"{cls.method} {kind} {over}: {rec.accuracy:.4f} drop {100 * drop:+.2f} pt in {secs:.0f} s",
                  file=sys.stderr, flush=True)
    print(f"### First-click defaults (demo CNN on {data.name}, base {base.accuracy:.2%}, {args.threads} threads)\n")
    print("| method | run | settings | accuracy | drop (pt) | promised (pt) | within | seconds |")
    print("|---|---|---|---:|---:|---:|:-:|---:|")
    for m, kind, shown, acc, drop, promise, secs in rows:
        within = "" if promise is None else ("yes" if drop <= promise + 1e-9 else "NO")
        print(f"| {m} | {kind} | {shown} | {acc:.2%} | {100 * drop:+.2f} | "
              f"{'' if promise is None else f'{100 * promise:g}'} | {within} | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
