"""Int8 latency against fp32 and against peers, measured side by side in one run.

For the demo CNN (1×28×28, Fashion-MNIST's shape) and ResNet-18 (3×32×32, CIFAR's shape), random weights
(latency does not depend on their values) and random calibration inputs, this times:

- fp32 in eager PyTorch and fp32 in ONNX Runtime (the same exported graph, not quantized);
- nnlab's int8 (``compression.int8.to_int8``: ONNX Runtime static, QDQ, per channel, calibrated — the
  default), also in the QOperator format and with nnlab's torch-fx backend;
- the peers applied directly to the same model: torch.ao FX (``prepare_fx``/``convert_fx``, x86 default
  qconfig) and ONNX Runtime's ``quantize_static`` with its defaults on the raw export.

Medians over repeats, measured round-robin (each round times every runtime once, so machine load drifts
hit all of them alike), threads fixed. Prints a markdown table.

    python bench/bench_quantization.py [--threads 1] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression.int8 import (  # noqa: E402
    Int8Config,
    OrtRunner,
    TorchRunner,
    export_onnx,
    quantize_fx,
    sqnr_db,
    to_int8,
    top1_agreement,
)
from nnlab.data.sets import ImageDataset  # noqa: E402
from nnlab.measure import interleaved_latency  # noqa: E402
from nnlab.models.registry import create_model  # noqa: E402

MODELS = [("demo-cnn", (1, 28, 28)), ("resnet18", (3, 32, 32))]


def _fake_data(shape: tuple[int, int, int], n: int = 64) -> ImageDataset:
    g = np.random.default_rng(0)
    x = torch.from_numpy(g.integers(0, 256, size=(n, *shape), dtype=np.uint8))
    y = torch.from_numpy((np.arange(n) % 10).astype(np.int64))
    return ImageDataset(id="bench", name="bench", source="random", classes=[str(i) for i in range(10)],
                        x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])


def _ort_direct(fp32: Path, out: Path, calib: np.ndarray) -> None:
    """ONNX Runtime's quantize_static with its defaults, no pre-processing: the 'applied directly' peer."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(fp32), str(out), Reader())


def build_runtimes(arch: str, shape: tuple[int, int, int], threads: int, workdir: Path) -> dict[str, object]:
    torch.manual_seed(0)
    model = create_model(arch, shape[0], 10, shape[1:]).eval()
    data = _fake_data(shape)
    calib = data.tensors("train")[0]
    runners: dict[str, object] = {"fp32 PyTorch eager": TorchRunner(model, threads, "pytorch-eager-fp32")}
    fp32 = workdir / f"{arch}.fp32.onnx"
    export_onnx(model, shape, fp32)
    runners["fp32 ONNX Runtime"] = OrtRunner(fp32, threads, "onnxruntime-fp32")
    res = to_int8(copy.deepcopy(model), data, Int8Config(backend="onnxruntime", threads=threads), workdir / f"{arch}-nnlab", calib=calib)
    runners["int8 nnlab (ORT QDQ)"] = res.runner
    res = to_int8(copy.deepcopy(model), data, Int8Config(backend="onnxruntime", threads=threads, quant_format="qoperator"),
                  workdir / f"{arch}-nnlab-qop", calib=calib)
    runners["int8 nnlab (ORT QOperator)"] = res.runner
    res = to_int8(copy.deepcopy(model), data, Int8Config(threads=threads, backend="torch-fx"),
                  workdir / f"{arch}-nnlab-fx", calib=calib)
    runners["int8 nnlab (torch-fx backend)"] = res.runner
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runners["int8 torch.ao FX (peer)"] = TorchRunner(quantize_fx(copy.deepcopy(model), calib), threads,
                                                         "pytorch-fx-int8")
    direct = workdir / f"{arch}.ort-direct.onnx"
    _ort_direct(fp32, direct, calib.numpy())
    runners["int8 ORT quantize_static defaults (peer)"] = OrtRunner(direct, threads, "onnxruntime-int8-direct")
    # fidelity on the calibration inputs (random model, so only a sanity check)
    ref = runners["fp32 PyTorch eager"].predict_logits(calib)
    for name, r in runners.items():
        out = r.predict_logits(calib)
        r.fidelity = (sqnr_db(ref, out), top1_agreement(ref, out))  # type: ignore[attr-defined]
    return runners


def measure(runners: dict[str, object], shape: tuple[int, int, int], batch: int, rounds: int,
            reps: int, threads: int) -> dict[str, dict]:
    x = np.random.default_rng(1).standard_normal((batch, *shape)).astype(np.float32)
    lat = interleaved_latency(runners, x, rounds=rounds, per_round=reps, warmup=3)  # nnlab's one harness
    return {k: v.to_dict() for k, v in lat.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, shape in MODELS:
            runners = build_runtimes(arch, shape, args.threads, Path(tmp))
            for batch in (1, 32):
                reps = 6 if batch == 1 else 2
                lat = measure(runners, shape, batch, args.rounds, reps, args.threads)
                for name, d in lat.items():
                    results.append({"model": arch, "input": "×".join(map(str, shape)), "batch": batch,
                                    "runtime": name, "median_ms": d["median_ms"], "p90_ms": d["p90_ms"],
                                    "repeats": d["repeats"], "sqnr_db": runners[name].fidelity[0],
                                    "agreement": runners[name].fidelity[1]})
    print(f"Int8 against fp32 and peers — threads fixed at {args.threads} (torch and ONNX Runtime intra-op), "
          f"{args.rounds} round-robin rounds, random weights; demo CNN at 1×28×28, ResNet-18 at 3×32×32; "
          f"torch {torch.__version__}, wall {time.perf_counter() - t0:.0f} s.\n")
    print("| model (input) | batch | runtime | median ms | p90 ms | ÷ fp32 eager | ÷ fp32 ORT | ÷ best peer int8 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    verdicts = []
    for arch, shape in MODELS:
        for batch in (1, 32):
            rows = [r for r in results if r["model"] == arch and r["batch"] == batch]
            base = {r["runtime"]: r["median_ms"] for r in rows}
            peer = min(v for k, v in base.items() if "(peer)" in k)
            for r in rows:
                m = r["median_ms"]
                vs_peer = f"{m / peer:.2f}" if r["runtime"].startswith("int8") else ""
                print(f"| {arch} ({r['input']}) | {batch} | {r['runtime']} | {m:.3f} | {r['p90_ms']:.3f} | "
                      f"{m / base['fp32 PyTorch eager']:.2f} | {m / base['fp32 ONNX Runtime']:.2f} | {vs_peer} |")
            nn8 = base["int8 nnlab (ORT QDQ)"]
            best = min(v for k, v in base.items() if k.startswith("int8 nnlab"))
            verdicts.append(f"{arch} batch {batch}: nnlab int8 (default, ORT QDQ) = "
                            f"{nn8 / base['fp32 PyTorch eager']:.2f}× fp32 eager, "
                            f"{nn8 / base['fp32 ONNX Runtime']:.2f}× fp32 ONNX Runtime, {nn8 / peer:.2f}× best peer; "
                            f"best nnlab backend {best / peer:.2f}× best peer")
    print("\nTargets: int8 ≤ 0.35× fp32 on ResNet-18 at batch 1; within 1.05× of the best peer.\n")
    for v in verdicts:
        print(f"- {v}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
