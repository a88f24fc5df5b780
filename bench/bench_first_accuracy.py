"""Benchmark: time to the first accuracy and to the full accuracy of an evaluation pass, before and after (issue 22).

For ResNet-18 and ResNet-50 (torchvision; random weights unless ``--weights`` gives a checkpoint: the timing does
not depend on them, the fidelity gate's verdict does) at 224 over the ``test/`` split of an RGB ImageFolder of
``--images`` images (generated synthetic shapes when ``--folder`` is not given; decoded once into the data cache,
timed separately), on ``--threads`` threads:

- the runtime choice, measured once per model (when the model is profiled; timed here separately as "choice,
  once"): :func:`nnlab.runtimes.bulk.bulk_runtime`, every fp32 candidate built, checked and timed.
- **before**: the fp32 full pass before any number — that runtime built and checked, then the whole split; the
  first accuracy is the full one.
- **after**: that runtime built and checked, then the streamed pass (:func:`nnlab.evaluate.streamed_pass`): a
  stratified sample of ``--first`` images in fp32 gives the first accuracy with its 95 % Wilson interval, then the
  rest of the split in the fastest runtime that passes the fidelity gate (bf16 where the CPU has it and top-1
  agreement ≥ 99.5 %).

- **from Load** (a freshly loaded model, the user's path: Load → the first number; unless ``--skip-load``): the
  register-model job's own sequence (:func:`nnlab.jobs.kinds.evaluate_and_profile`) in a fresh workspace: the
  streamed test pass first (its first sample in eager PyTorch when the runtime is not chosen yet; the timing of every
  runtime right after the first number, the rest in the fastest), then the profile, which reuses that pass. Timed
  from the call (the model built, the data decoded) to the first number, to the full accuracy stored and to the
  record. **Before** this path (issue 22's first version), the first number waited for the whole profile: the timing
  of every runtime ("table, once" below), a full test pass in the fastest runtime, then the evaluation job's own
  streamed pass; that figure is composed of the parts measured here: table + the "before" pass + the "after"
  first number (and the full accuracy: table + "before" + "after" full: the test split ran twice).

Prints a README-ready markdown table and the CPU features it ran on. The figures are wall-clock seconds of one run
each (no repeats: the passes are long); on a shared machine they vary with the load.

Run: ``python bench/bench_first_accuracy.py [--images 10000] [--threads 2] [--archs tv:resnet18,tv:resnet50]``;
a quick check: ``--images 300 --first 100 --min-rest 0 --choice-batch 32 --archs tv:resnet18``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnlab.data.preprocess import imagenet  # noqa: E402
from nnlab.data.sets import load_dataset  # noqa: E402
from nnlab.data.synthetic import SHAPES, draw_shape  # noqa: E402
from nnlab.estimate import wilson_interval  # noqa: E402
from nnlab.evaluate import predict_logits, streamed_pass  # noqa: E402
from nnlab.models.registry import create_model  # noqa: E402
from nnlab.runtimes import bulk  # noqa: E402
from nnlab.runtimes.precision import cpu_support  # noqa: E402
from nnlab.threads import torch_threads  # noqa: E402


def make_folder(root: Path, images: int, classes: int = 10, size: int = 256, seed: int = 0) -> Path:
    """``root/test/<class>/`` with ``images`` JPEGs (as even over the classes as possible) and two per class in
    ``root/train/`` (the loader wants both splits; only the test split is evaluated)."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == f"{images}/{classes}/{size}/{seed}":
        return root
    rng = np.random.default_rng(seed)
    for c, shape in enumerate(SHAPES[:classes]):
        n = images // classes + (1 if c < images % classes else 0)
        for part, count in (("test", n), ("train", 2)):
            folder = root / part / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_shape(shape, size, rng).save(folder / f"{shape}_{i:05d}.jpg", "JPEG", quality=92)
    done.write_text(f"{images}/{classes}/{size}/{seed}")
    return root


def before(model: torch.nn.Module, data, threads: int, choice: str) -> dict:  # noqa: ANN001
    """The old pass: the model's measured runtime built and checked, then the whole split before any number."""
    t0 = time.perf_counter()
    rt = bulk.bulk_runtime(model, data, "test", threads=threads, prefer=choice)
    logits = predict_logits(model, data, "test", runner=rt.runner)
    full = time.perf_counter() - t0
    labels = data.labels("test").numpy()
    return {"runtime": rt.runtime, "first_s": full, "full_s": full,
            "accuracy": float((logits.argmax(1) == labels).mean()), "logits": logits}


def after(model: torch.nn.Module, data, threads: int, choice: str, first: int,  # noqa: ANN001
          min_rest: int | None) -> dict:
    """The streamed pass: the same runtime built and checked, a stratified first sample, the rest gated."""
    t1 = time.perf_counter()
    rt = bulk.bulk_runtime(model, data, "test", threads=threads, prefer=choice)
    seen: dict = {}

    def on_chunk(state: dict) -> None:
        if state["phase"] == "gate" and "first_s" not in seen:
            seen.update(first_s=time.perf_counter() - t1, first=dict(state))

    logits, info = streamed_pass(model, data, "test", runner=rt.runner, runtime=rt.runtime, first=first,
                                 min_rest=min_rest, on_chunk=on_chunk)
    full = time.perf_counter() - t1
    labels = data.labels("test").numpy()
    f = seen["first"]
    return {"runtime": info["runtime"], "precision": info["precision"], "first_s": seen["first_s"],
            "full_s": full, "first_acc": f["first_correct"] / max(1, f["first_images"]),
            "first_ci": wilson_interval(f["first_correct"], f["first_images"]), "first_n": f["first_images"],
            "accuracy": float((logits.argmax(1) == labels).mean()), "gate": info["gate"], "note": info["gate_note"],
            "logits": logits}


def from_load(model: torch.nn.Module, data, work: Path, arch: str, first_only: bool = False) -> dict:  # noqa: ANN001
    """The register-model job's sequence on a freshly loaded model, in a fresh workspace: seconds to the first number
    (the stratified sample's counts stored), to the full accuracy (the pass stored) and to the record.
    ``first_only``: the job is cancelled once the first number is stored (only that figure is measured)."""
    import shutil

    from nnlab.jobs.kinds import evaluate_and_profile, stream_key
    from nnlab.workspace import Workspace

    root = work / f"ws-load-{arch.replace(':', '-')}"
    shutil.rmtree(root, ignore_errors=True)
    ws = Workspace(root)
    skey = stream_key("bench", data.id, "test")
    seen: dict = {}
    t0 = time.perf_counter()

    def progress(message: str, fraction: float | None = None, **metrics) -> None:  # noqa: ANN003
        if "first_s" not in seen and (ws.load_run(skey) or {}).get("phase") in ("gate", "rest", "done"):
            seen["first_s"] = time.perf_counter() - t0
        if "full_s" not in seen and fraction is not None and fraction >= 0.6:  # the pass is stored: profiling
            seen["full_s"] = time.perf_counter() - t0

    if first_only:
        from nnlab.errors import Cancelled

        try:
            evaluate_and_profile(ws, model, data, "bench", arch, arch, progress=progress,
                                 cancel=lambda: "first_s" in seen)
        except Cancelled:
            pass
        counts = ws.load_run(skey) or {}
        return {**seen, "first_n": counts.get("first_images", 0), "first_correct": counts.get("first_correct", 0)}
    record = evaluate_and_profile(ws, model, data, "bench", arch, arch, progress=progress)
    seen["record_s"] = time.perf_counter() - t0
    seen.setdefault("full_s", seen["record_s"])
    counts = ws.load_run(skey) or {}
    return {**seen, "accuracy": record.accuracy, "runtime": (record.extra.get("accuracy_pass") or {}).get("runtime"),
            "first_n": counts.get("first_images", 0), "first_correct": counts.get("first_correct", 0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10000, help="test images of the generated folder")
    ap.add_argument("--folder", default="", help="an ImageFolder with a test/ split (default: generated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--archs", default="tv:resnet18,tv:resnet50")
    ap.add_argument("--first", type=int, default=300, help="images of the stratified first sample")
    ap.add_argument("--min-rest", type=int, default=None, help="smallest rest worth a bf16 try (default 4×first)")
    ap.add_argument("--choice-batch", type=int, default=bulk.BATCH,
                    help="batch size of the runtime choice's timing (the app's: 256; smaller for a quick check)")
    ap.add_argument("--weights", action="append", default=[], metavar="ARCH=PATH",
                    help="a trained checkpoint for an architecture (repeatable); random weights give near-tied "
                         "logits, on which bf16 flips more top-1s than on a trained model, so the gate may refuse")
    ap.add_argument("--bulk-min-images", type=int, default=bulk.MIN_IMAGES,
                    help="smallest pass that chooses its runtime by measurement (the app's: %(default)s; lower it to "
                         "check the from-Load path's choice after the first number on a small folder)")
    ap.add_argument("--skip-load", action="store_true",
                    help="skip the from-Load path (the register-model job's sequence: one more full pass per model)")
    ap.add_argument("--first-from-load-only", action="store_true",
                    help="measure only the seconds from Load to the first number (the job is cancelled there)")
    ap.add_argument("--workdir", default="", help="where the folder and the data cache go (default: a temp dir)")
    args = ap.parse_args(argv)
    bulk.MIN_IMAGES = args.bulk_min_images
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nnlab-first-acc-")).resolve()
    if not args.folder:  # the generated folder lies in the work folder: let nnlab read it
        os.environ["NNLAB_ALLOWED_ROOTS"] = os.pathsep.join(filter(None, [os.environ.get("NNLAB_ALLOWED_ROOTS"),
                                                                          str(work)]))
    t = time.perf_counter()
    folder = Path(args.folder) if args.folder else make_folder(work / f"shapes-{args.images}", args.images)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    data = load_dataset("imagefolder", folder, imagenet(), workspace=work / "ws")
    decode_s = time.perf_counter() - t
    n = len(data.labels("test"))
    cpu = cpu_support()
    print(f"# {n:,} test images at {'×'.join(map(str, data.input_shape))}, {args.threads} threads; folder "
          f"{'given' if args.folder else f'generated in {gen_s:.0f} s'}, decoded into the cache in {decode_s:.0f} s",
          file=sys.stderr)
    weights = dict(w.split("=", 1) for w in args.weights)
    rows = []
    with torch_threads(args.threads):
        for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
            model = create_model(arch, 3, data.num_classes, (224, 224), seed=0).eval()
            if arch in weights:
                from nnlab.models.checkpoints import load_into, read_state_dict_file

                load_into(model, read_state_dict_file(weights[arch]))
            if args.first_from_load_only:
                ld = from_load(model, data, work, arch, first_only=True)
                lo, hi = wilson_interval(ld["first_correct"], ld["first_n"])
                print(f"| {arch} | {ld['first_s']:.1f} | {ld['first_correct'] / max(1, ld['first_n']):.1%} "
                      f"[{lo:.1%}, {hi:.1%}] on {ld['first_n']} |")
                continue
            t = time.perf_counter()  # the choice, measured once per model (when it is profiled)
            choice = bulk.bulk_runtime(model, data, "test", min_images=0, threads=args.threads,
                                       batch=args.choice_batch)
            choose_s = time.perf_counter() - t
            bulk.clear_built()
            b = before(model, data, args.threads, choice.runtime)
            bulk.clear_built()  # "after" builds and checks its runner itself, as a fresh process would
            a = after(model, data, args.threads, choice.runtime, args.first, args.min_rest)
            a["choose_s"] = choose_s
            if not args.skip_load:
                from nnlab.base import profile_table

                bulk.clear_built()
                t = time.perf_counter()  # the profile's timing of every runtime (what "before" waited for first)
                profile_table(model, data)
                a["table_s"] = time.perf_counter() - t
                bulk.clear_built()
                a["load"] = from_load(model, data, work, arch)
            agree = float((a["logits"].argmax(1) == b["logits"].argmax(1)).mean())
            rows.append((arch + ("" if arch in weights else " (random weights)"), b, a, agree))
            print(f"{arch}: before {b['full_s']:.1f} s ({b['runtime']}); after first {a['first_s']:.1f} s, full "
                  f"{a['full_s']:.1f} s ({a['runtime']}); {a['note']}", file=sys.stderr)
    print(f"\nCPU: {', '.join(cpu['features']) or 'no bf16/int8 features'}{'' if cpu['amx'] else ' (no AMX)'}; "
          f"{n:,} test images at 224, {args.threads} threads; seconds from the model and decoded data being ready.\n")
    print("| model | before: first = full accuracy (s) | runtime | after: first accuracy (s) | first sample "
          "(95 % Wilson) | after: full accuracy (s) | runtime of the rest | gate: top-1 agreement, max/mean "
          "logit error | choice, once per model (s) | full-pass top-1 agreement after vs before |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch, b, a, agree in rows:
        g = a["gate"]
        gate = (f"{g['agreement']:.2%}, {g['max_abs_err']:.3g}/{g['mean_abs_err']:.3g}"
                + ("" if g["passed"] else " (refused)")) if g else a["note"]
        lo, hi = a["first_ci"]
        print(f"| {arch} | {b['full_s']:.1f} | {b['runtime']} | {a['first_s']:.1f} | {a['first_acc']:.1%} "
              f"[{lo:.1%}, {hi:.1%}] on {a['first_n']} | {a['full_s']:.1f} | {a['runtime']} ({a['precision']}) | "
              f"{gate} | {a['choose_s']:.1f} | {agree:.2%} |")
    if any("load" in a for _, _, a, _ in rows):
        print("\nFrom **Load** (a freshly loaded model: built, data decoded) to the first number, the full accuracy and "
              "the record. Before: the profile first (table + a full test pass), then the evaluation's streamed pass "
              "(composed of the parts above); after: the register-model job's sequence, measured.\n")
        print("| model | table of every runtime, once (s) | before: first accuracy from Load (s) | before: full "
              "accuracy from Load (s) | after: first accuracy from Load (s) | first sample | after: full accuracy "
              "from Load (s) | after: record (s) | runtime of the pass |")
        print("|---|---|---|---|---|---|---|---|---|")
        for arch, b, a, _ in rows:
            if "load" not in a:
                continue
            ld, tab = a["load"], a["table_s"]
            lo, hi = wilson_interval(ld["first_correct"], ld["first_n"])
            print(f"| {arch} | {tab:.1f} | {tab + b['full_s'] + a['first_s']:.1f} | {tab + b['full_s'] + a['full_s']:.1f} "
                  f"| {ld['first_s']:.1f} | {ld['first_correct'] / max(1, ld['first_n']):.1%} [{lo:.1%}, {hi:.1%}] on "
                  f"{ld['first_n']} | {ld['full_s']:.1f} | {ld['record_s']:.1f} | {ld['runtime']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
