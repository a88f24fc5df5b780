"""Benchmark: repairing a variant that lost accuracy, beside NNCF's accuracy control, and what several variants
forgot (PIEs) on Fashion-MNIST with 3 % of the training labels flipped (issue 21).

The model is the demo CNN trained by nnlab's demo config on Fashion-MNIST with 3 % of the training labels
moved to another class (seed 0): the same model as ``bench/bench_labels.py``, read from its cache where it is
there (else trained here, the same way, and cached).

1. **Repair.** A compression that loses ≥ 2 points is searched for among int8 in ONNX Runtime and OpenVINO
   and nnlab's 4/3/2-bit weight quantization (per-tensor scales); the first that loses ≥ 2 points on the
   validation samples (the first ``--val`` test images) is repaired as the page repairs a PyTorch variant:
   layers ranked by the accuracy that putting each back alone recovers (:func:`diagnostics.variantdiff.recovery`),
   put back in that order until the drop is within 0.5 point (:func:`diagnostics.variantdiff.restore_until`).
   Printed: base / compressed / repaired accuracy on the validation samples and on the whole test split, the
   share of the drop recovered, latency of compressed vs repaired in the same runtime (nnlab.measure's
   interleaved harness, medians), the layers restored. Beside it, on the same base and the same validation
   samples: ``nncf.quantize_with_accuracy_control`` (OpenVINO int8, ``max_drop`` 0.5 point): accuracy, latency
   in OpenVINO against NNCF's plain int8, layers reverted to float.
2. **PIEs.** 6 variants of the same model (unstructured pruning at 30–60 %, per-channel weight quantization at
   4 and 3 bits, no fine-tuning); PIEs (modal prediction across the variants ≠ the base's,
   :func:`diagnostics.variantdiff.forgotten`) on the first ``--train-samples`` images of the *training* split
   (the flipped labels are there); their share among the flipped samples against the base rate.

Run: ``python bench/bench_repair.py [--threads 2] [--val 1000] [--train-samples 20000] [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression.int8 import WEIGHTED_OV_OPS, Int8Config, ov_layer_of, to_int8  # noqa: E402
from compression.pruning import PruneUnstructuredConfig  # noqa: E402
from compression.quantization import WeightQuantConfig  # noqa: E402
from compression.registry import CompressContext, apply  # noqa: E402
from diagnostics import variantdiff as vd  # noqa: E402
from nnlab.base import demo_config  # noqa: E402
from nnlab.data.sets import load_dataset  # noqa: E402
from nnlab.measure import interleaved_latency  # noqa: E402
from nnlab.models.randinit import seeded_init  # noqa: E402
from nnlab.models.registry import create_model  # noqa: E402
from nnlab.runtimes import openvino as ovr  # noqa: E402
from nnlab.runtimes.torch_eager import TorchRunner  # noqa: E402
from nnlab.train import train_model  # noqa: E402

BUDGET = 0.005  # half a point


def cpu_line() -> str:
    """The CPU model and its vector flags that matter for int8 / fp32 inference."""
    model, flags = "?", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "?":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    keep = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16") if f in flags]
    return f"{model}; flags: {', '.join(keep) or 'none of avx2/avx512/vnni/amx'}"


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def noisy_model(cache: Path, threads: int) -> tuple[Any, Any, np.ndarray]:
    """The demo CNN trained on Fashion-MNIST with 3 % of training labels flipped (bench_labels' model)."""
    d = load_dataset("fashion-mnist")
    y = d.y_train.numpy().copy()
    rng = np.random.default_rng(0)
    flip = rng.choice(len(y), int(0.03 * len(y)), replace=False)
    y[flip] = (y[flip] + rng.integers(1, d.num_classes, len(flip))) % d.num_classes
    noisy = dataclasses.replace(d, id=f"{d.id}-noisy", y_train=torch.from_numpy(y))
    c, h, w = d.input_shape
    model = seeded_init(create_model("demo-cnn", c, d.num_classes, (h, w)), 0)
    cached = cache / f"{d.id}-demo-cnn-flip0.03-t{threads}.pt"
    if cached.exists():
        model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True)["state_dict"])
    else:
        t0 = time.perf_counter()
        hist = train_model(model, noisy, demo_config(noisy))
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "train_s": time.perf_counter() - t0,
                    "test_acc": hist[-1].test_acc}, cached)
    mask = np.zeros(len(y), bool)
    mask[flip] = True
    return model.eval(), noisy, mask


def preds_of(predict, x: torch.Tensor, batch: int = 500) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([np.asarray(predict(x[i:i + batch])).argmax(1) for i in range(0, len(x), batch)])


def ov_quantized_layers(model: Any) -> list[str]:
    """PyTorch names of the Conv/MatMul layers of an OpenVINO model whose input or weights are quantized."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in WEIGHTED_OV_OPS:
            continue
        seen, stack, quantized = 0, [op.input_value(i).get_node() for i in range(op.get_input_size())], False
        while stack and seen < 12:
            node = stack.pop()
            seen += 1
            t = node.get_type_name()
            if t == "FakeQuantize" or (t == "Constant" and str(node.get_element_type()) in ("i8", "u8", "<Type: 'int8_t'>",
                                                                                      "<Type: 'uint8_t'>")):
                quantized = True
                break
            if t in ("Convert", "Subtract", "Multiply", "Reshape"):
                stack.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
        if quantized:
            out.append(ov_layer_of(op.get_friendly_name()) or op.get_friendly_name())
    return out


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def repair_part(model, data, args, lines: list[str]) -> None:
    xv, yv = data.tensors("test", np.arange(args.val))
    yv = yv.numpy()
    xt, yt = data.tensors("test", np.arange(len(data.labels("test"))))
    yt = yt.numpy()
    acc_b = float((preds_of(model, xv) == yv).mean())
    acc_bt = float((preds_of(model, xt) == yt).mean())
    tried, chosen = [], None
    for label, cfg in (("int8, ONNX Runtime (static, per-channel)", Int8Config(backend="onnxruntime")),
                       ("int8, OpenVINO/NNCF (static)", Int8Config(backend="openvino")),
                       ("4-bit weights, per-tensor", WeightQuantConfig(bits=4, granularity="per-tensor")),
                       ("3-bit weights, per-tensor", WeightQuantConfig(bits=3, granularity="per-tensor")),
                       ("2-bit weights, per-tensor", WeightQuantConfig(bits=2, granularity="per-tensor"))):
        with tempfile.TemporaryDirectory(prefix="bench-repair-") as tmp:
            if isinstance(cfg, Int8Config):
                res = to_int8(model, data, cfg, Path(tmp))
                acc = float((preds_of(res.runner.predict_logits, xv) == yv).mean())
                res = None
            else:
                res = apply(model, cfg, CompressContext(data, workdir=Path(tmp)))
                acc = float((preds_of(res.model, xv) == yv).mean())
        tried.append((label, acc))
        print(f"  {label}: {pct(acc)} (base {pct(acc_b)})", file=sys.stderr, flush=True)
        if acc_b - acc >= 0.02 and res is not None:
            chosen = (label, cfg, res.model)
            break
    lines.append("| compression tried | accuracy (validation) | drop (pt) |")
    lines.append("|---|---:|---:|")
    for label, acc in tried:
        lines.append(f"| {label} | {pct(acc)} | {100 * (acc_b - acc):+.2f} |")
    lines.append("")
    if chosen is None:
        lines.append("No compression tried loses ≥ 2 points: nothing to repair.")
        return
    label, cfg, comp = chosen
    t0 = time.perf_counter()
    layers = vd.weighted_layers(model)
    _, acc_c, ranking = vd.recovery(model, comp, xv, yv, [[name] for name in layers])
    order = [r.layers[0] for r in ranking]
    restored, _, acc_r = vd.restore_until(model, comp, xv, yv, order, BUDGET)
    repair_s = time.perf_counter() - t0
    repaired = vd.put_back(model, comp, restored)
    acc_ct = float((preds_of(comp, xt) == yt).mean())
    acc_rt = float((preds_of(repaired, xt) == yt).mean())
    one = torch.from_numpy(np.asarray(xv[:1]))
    lat = interleaved_latency({"base": TorchRunner(model, args.threads), "compressed": TorchRunner(comp, args.threads),
                               "repaired": TorchRunner(repaired, args.threads)}, one, rounds=args.rounds)
    ratio = lat["repaired"].median_ms / lat["compressed"].median_ms
    rec = (acc_r - acc_c) / (acc_b - acc_c)
    lines.append(f"**Repair of {label}** (nnlab; {len(layers)} Conv/Linear layers; ranking: each layer put back "
                 f"alone, {len(layers)} evaluations on the {args.val} validation images; repair {repair_s:.1f} s):")
    lines.append("")
    lines.append(f"| | validation ({args.val} test images) | whole test split ({len(yt):,}) | latency b=1, "
                 f"{lat['base'].runtime} (median ms) |")
    lines.append("|---|---:|---:|---:|")
    lines.append(f"| fp32 base | {pct(acc_b)} | {pct(acc_bt)} | {lat['base'].median_ms:.3f} |")
    lines.append(f"| {label} | {pct(acc_c)} | {pct(acc_ct)} | {lat['compressed'].median_ms:.3f} |")
    lines.append(f"| repaired: {', '.join(restored) or 'none'} put back | {pct(acc_r)} | {pct(acc_rt)} | "
                 f"{lat['repaired'].median_ms:.3f} |")
    lines.append("")
    rec_t = (acc_rt - acc_ct) / (acc_bt - acc_ct) if acc_bt > acc_ct else float("nan")
    lines.append(f"Drop recovered: **{100 * rec:.0f} %** on the validation images (goal ≥ 80 %: "
                 f"{'OK' if rec >= 0.8 else 'missed'}), {100 * rec_t:.0f} % on the whole test split; repaired / "
                 f"compressed latency **{ratio:.2f}×** (goal ≤ 1.25×: {'OK' if ratio <= 1.25 else 'missed'}; "
                 f"both run dequantized float weights in eager PyTorch, so the ratio measures only noise: "
                 f"{lat['compressed'].repeats} calls each, {args.rounds} interleaved rounds, {args.threads} "
                 f"thread(s)). Layers restored: {len(restored)} of {len(layers)} ({', '.join(restored) or 'none'}).")
    lines.append("")
    lines.append("Single-layer ranking (accuracy with only that layer put back): " + ", ".join(
        f"{r.layers[0]} {pct(r.accuracy)}" for r in ranking[:5]) + ".")
    lines.append("")
    nncf_part(model, data, xv, yv, xt, yt, acc_b, args, lines)


def nncf_part(model, data, xv, yv, xt, yt, acc_b, args, lines: list[str]) -> None:
    if not ovr.available():
        lines.append("OpenVINO is not installed: no NNCF comparison.")
        return
    from compression.int8 import calibration_inputs

    calib = calibration_inputs(data, 256, 0)
    fp = ovr.convert(model, data.input_shape)
    t0 = time.perf_counter()
    plain = ovr.quantize(fp, calib)
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ac = ovr.quantize_with_accuracy_control(fp, calib, xv, yv, max_drop=BUDGET)
    ac_s = time.perf_counter() - t0
    q_plain, q_ac = ov_quantized_layers(plain), ov_quantized_layers(ac)
    reverted = [la for la in q_plain if la not in q_ac]
    runners = {"fp32": ovr.OpenVINORunner(fp, args.threads), "int8": ovr.OpenVINORunner(plain, args.threads),
               "ac": ovr.OpenVINORunner(ac, args.threads)}
    accs = {k: (float((preds_of(r.predict_logits, xv) == yv).mean()), float((preds_of(r.predict_logits, xt) == yt).mean()))
            for k, r in runners.items()}
    lat = interleaved_latency(runners, np.asarray(xv[:1]), rounds=args.rounds)
    lines.append(f"**NNCF `quantize_with_accuracy_control`** on the same base (converted to OpenVINO), the same "
                 f"{args.val} validation images, max_drop {100 * BUDGET:g} pt, 256 calibration images "
                 f"(plain `nncf.quantize` {plain_s:.1f} s, with accuracy control {ac_s:.1f} s):")
    lines.append("")
    lines.append("| OpenVINO | validation | whole test split | latency b=1 (median ms) | quantized Conv/MatMul |")
    lines.append("|---|---:|---:|---:|---:|")
    for k, name, q in (("fp32", "fp32", 0), ("int8", "NNCF int8", len(q_plain)),
                       ("ac", "NNCF int8 with accuracy control", len(q_ac))):
        lines.append(f"| {name} | {pct(accs[k][0])} | {pct(accs[k][1])} | {lat[k].median_ms:.3f} | {q} |")
    lines.append("")
    lines.append(f"Layers NNCF reverted to float: {len(reverted)} ({', '.join(reverted) or 'none'}); its int8 "
                 f"drop on the validation images is {100 * (acc_b - accs['int8'][0]):+.2f} pt before accuracy "
                 f"control, {100 * (acc_b - accs['ac'][0]):+.2f} pt after.")
    lines.append("")


def pie_part(model, noisy, flipped: np.ndarray, args, lines: list[str]) -> None:
    n = min(args.train_samples, len(flipped))
    x, y = noisy.tensors("train", np.arange(n))
    y = y.numpy()
    mask = flipped[:n]
    t0 = time.perf_counter()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x[i:i + 500]), 1) for i in range(0, n, 500)]).numpy()
    pb = probs.argmax(1)
    configs = [("prune 30 %", PruneUnstructuredConfig(sparsity=0.3)),
               ("prune 40 %", PruneUnstructuredConfig(sparsity=0.4)),
               ("prune 50 %", PruneUnstructuredConfig(sparsity=0.5)),
               ("prune 60 %", PruneUnstructuredConfig(sparsity=0.6)),
               ("4-bit weights", WeightQuantConfig(bits=4)),
               ("3-bit weights", WeightQuantConfig(bits=3))]
    preds, rows = [], []
    for label, cfg in configs:
        with tempfile.TemporaryDirectory(prefix="bench-pies-") as tmp:
            res = apply(model, cfg, CompressContext(noisy, workdir=Path(tmp)))
        p = preds_of(res.model, x)
        preds.append(p)
        rows.append((label, float((p == y).mean()), float((p != pb).mean())))
        print(f"  {label}: accuracy {pct(rows[-1][1])}", file=sys.stderr, flush=True)
    pie = vd.forgotten(pb, np.stack(preds), y, noisy.num_classes, suspected=mask, base_confidence=probs.max(1))
    secs = time.perf_counter() - t0
    lines.append(f"**PIEs** over {len(configs)} variants (no fine-tuning), on the first {n:,} images of the "
                 f"*training* split (where the flipped labels are; {int(mask.sum())} of them flipped); accuracy "
                 f"against the noisy labels ({secs:.0f} s):")
    lines.append("")
    lines.append("| variant | accuracy (noisy training labels) | predictions changed vs base |")
    lines.append("|---|---:|---:|")
    lines.append(f"| base | {pct(float((pb == y).mean()))} | |")
    for label, acc, changed in rows:
        lines.append(f"| {label} | {pct(acc)} | {pct(changed)} |")
    lines.append("")
    lift = pie["suspected_among_pies"] / pie["suspected_rate"] if pie["suspected_rate"] else float("nan")
    lines.append(f"PIEs: **{pie['count']}** ({pct(pie['share'])} of the samples). Flipped labels among PIEs: "
                 f"**{pct(pie['suspected_among_pies'])}** against the base rate {pct(pie['suspected_rate'])} "
                 f"(**{lift:.1f}×**); PIE rate among flipped samples {pct(pie['pie_rate_suspected'])} against "
                 f"{pct(pie['pie_rate'])} overall; among low-confidence base predictions (< 0.5) "
                 f"{pct(pie['pie_rate_low_confidence'])}. Base accuracy on PIEs {pct(pie['base_accuracy_pie'])}, "
                 f"on the rest {pct(pie['base_accuracy_rest'])}.")
    lines.append("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val", type=int, default=1000, help="validation samples (the first test images)")
    ap.add_argument("--train-samples", type=int, default=20000, help="training images the PIEs are counted on")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved latency rounds")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "nnlab-bench-labels"),
                    help="folder of the trained noisy-label model (shared with bench_labels.py)")
    ap.add_argument("--skip-pies", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load0 = load_average()
    model, noisy, flipped = noisy_model(Path(args.cache), args.threads)
    lines = [f"Demo CNN trained on Fashion-MNIST with 3 % of the training labels flipped (seed 0; bench_labels' "
             f"model). CPU: {cpu_line()}; {args.threads} thread(s).", ""]
    repair_part(model, noisy, args, lines)
    if not args.skip_pies:
        pie_part(model, noisy, flipped, args, lines)
    lines.append(f"Measured in {time.perf_counter() - t0:.0f} s; load average {load0} at the start, "
                 f"{load_average()} at the end (above 2: other work shared the 2 cores, latencies are disturbed).")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
