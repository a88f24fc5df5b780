"""Benchmark: a real architecture at 224 — the evaluation pass against a bare forward loop, warm pages, and the
seven attribution methods.

ResNet-18 (torchvision, random seeded weights, 10 classes) with its own preprocessing (shorter side 256,
centre crop 224, ImageNet mean/std) over a generated ImageFolder of coloured shapes (``--images`` JPEGs at
256 px, 20 % test), ``--threads`` threads:

1. the one evaluation pass over the test split (batches streamed from the data cache, logits, softmax,
   losses, predictions) in eager PyTorch, and in the runtime nnlab chooses, each ÷ a bare forward loop over
   the same tensors already in memory, interleaved, medians over ``--repeats`` (goal ≤ 1.1 for eager);
2. every page through Streamlit's AppTest, run once cold (jobs run, caches fill) and then warm: the warm
   script time per page (goal ≤ 1 s; the browser's drawing is not included);
3. the seven attribution methods of the Look-inside page on one image, each timed (median of 3).

Run: ``python bench/bench_zoo.py [--images 200] [--threads 2] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGES = ["overview", "diagnose_goal", "diagnose_classes", "diagnose_worst", "diagnose_data", "diagnose_curves",
         "inside_filters", "inside_features", "inside_activations", "inside_attributions", "compress_lab",
         "compress_pareto", "compress_compare", "jobs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--arch", default="tv:resnet18")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nnlab-bench-zoo-"))
    os.environ["NNLAB_WORKSPACE"] = str(tmp / "ws")
    os.environ["NNLAB_ALLOWED_ROOTS"] = os.pathsep.join(filter(None, [os.environ.get("NNLAB_ALLOWED_ROOTS"), str(tmp)]))
    os.environ["NNLAB_RAY"] = "0"
    import torch

    from diagnostics import attributions as A
    from nnlab.data.sets import load_dataset
    from nnlab.data.synthetic import make_shapes_folder
    from nnlab.evaluate import predict_logits, result_from_logits
    from nnlab.models.registry import arch_label, create_model, default_preprocessing
    from nnlab.runtimes import bulk

    torch.set_num_threads(args.threads)
    folder = make_shapes_folder(tmp / "shapes", per_class=max(1, args.images // 10), size=256)
    pre = default_preprocessing(args.arch)
    data = load_dataset("imagefolder", folder, pre, workspace=tmp / "ws")
    model = create_model(args.arch, 3, data.num_classes, (224, 224), seed=0).eval()
    n = len(data.y_test)
    x_all = torch.cat([x for x, _ in data.stream("test", 64)])
    labels = data.labels("test").numpy()

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, n, 64):
                model(x_all[i:i + 64])

    def eval_pass(runner=None) -> None:  # noqa: ANN001
        result_from_logits(predict_logits(model, data, "test", batch_size=64, runner=runner), labels)

    rt = bulk.bulk_runtime(model, data, "test", min_images=0, batch=64)
    times: dict[str, list[float]] = {"bare": [], "eval": [], "eval_rt": []}
    bare()
    eval_pass()
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("eval", eval_pass), ("eval_rt", lambda: eval_pass(rt.runner))):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    # pages: cold, then warm
    from streamlit.testing.v1 import AppTest

    from nnlab.ui.session import RANDOM

    page_times = []
    for page in PAGES:
        row = {"page": page}
        for phase in ("cold", "warm"):
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
            at.switch_page(f"pages/{page}.py")
            at.session_state["dataset"] = "imagefolder"
            at.session_state["dataset_path"] = str(folder)
            at.session_state["arch"] = args.arch
            at.session_state["weights"] = RANDOM
            t = time.perf_counter()
            at.run()
            row[phase] = time.perf_counter() - t
            row["exception"] = bool(at.exception)
        page_times.append(row)

    # attributions on one image
    x = x_all[:1]
    prep = A.prepare(model, x)
    target = int(model(x).argmax())
    layer = A.gradcam_layers(model)[0] if A.gradcam_layers(model) else None  # the page's default
    window = max(1, x.shape[-1] // 8)  # the page's default occlusion window (stride half of it)
    attr = {}
    for meth in A.METHODS:
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            A.attribute(prep, x, meth, target, ig_steps=32, layer=layer, window=window)
            ts.append(time.perf_counter() - t)
        attr[meth] = statistics.median(ts)

    print(f"{arch_label(args.arch)} at 224 (random seeded weights), "
          f"{args.threads} threads; {len(data.y_train) + n:,} generated JPEGs at 256 px ({n:,} test); preprocessing: "
          f"{pre.describe()}.\n")
    print("| pass over the test split | median s | ÷ bare forward loop |")
    print("|---|---:|---:|")
    print(f"| bare forward loop over in-memory tensors (eager) | {med['bare']:.3f} | 1.00 |")
    print(f"| the evaluation pass, eager PyTorch (streamed from the cache; logits, softmax, losses) | "
          f"{med['eval']:.3f} | {med['eval'] / med['bare']:.2f} |")
    print(f"| the evaluation pass in the runtime nnlab chose ({rt.runtime}) | {med['eval_rt']:.3f} | "
          f"{med['eval_rt'] / med['bare']:.2f} |")
    ok = "OK" if med["eval"] / med["bare"] <= 1.1 else "missed"
    print(f"\nEvaluation pass ÷ bare forward (eager, same tensors) = {med['eval'] / med['bare']:.2f} (goal ≤ 1.1): {ok}.\n")
    print("| page (AppTest script run) | cold s | warm s |")
    print("|---|---:|---:|")
    for r in page_times:
        print(f"| {r['page']} | {r['cold']:.2f} | {r['warm']:.2f}{' (exception!)' if r['exception'] else ''} |")
    warm = [r["warm"] for r in page_times]
    print(f"\nWarm pages: median {statistics.median(warm):.2f} s, slowest {max(warm):.2f} s "
          f"({max(page_times, key=lambda r: r['warm'])['page']}); goal ≤ 1 s: "
          f"{'OK' if max(warm) <= 1.0 else f'{sum(w > 1.0 for w in warm)} page(s) over'}.\n")
    print("| attribution method (one image, 224) | median s of 3 |")
    print("|---|---:|")
    for meth, s in attr.items():
        label = A.METHODS[meth].replace("|", r"\|")  # a pipe would end the table cell
        print(f"| {label} | {s:.2f} |")
    print(f"\nGrad-CAM layer: {layer}; integrated gradients with 32 steps; occlusion window {window} px, stride "
          f"{max(1, window // 2)} (the page's defaults).")


if __name__ == "__main__":
    main()
