"""Runtimes at 224 px: fp32 and int8 in every runtime, nnlab's and the peers', all interleaved in one run.

For ResNet-18, MobileNetV2 and ResNet-50 (torchvision, 1000 classes, random weights seeded, batch-norm
statistics re-estimated on random inputs: latency does not depend on the values) at 3×224×224, batch 1 and 8,
with 1 and 2 intra-op threads, this times:

- fp32: eager PyTorch, ONNX Runtime (the exported graph), OpenVINO (inference precision f32); OpenVINO in
  bf16 inference precision is shown for information where the CPU has bf16 (it is not fp32);
- int8 by nnlab: the default (``Int8Config()``, backend ``auto``: the fastest backend measured on this machine
  at batch 1 with this thread count), and each backend on its own (``openvino`` = NNCF, ``onnxruntime`` =
  ORT static QDQ per channel, ``torch-fx``);
- int8 by the peers applied directly: OpenVINO + NNCF with their defaults (``ov.convert_model``,
  ``nncf.quantize``, ``compile_model`` with only the thread count set), once with a dynamic batch axis and
  once converted at a static batch of 1 and reshaped to each timed batch size (as OpenVINO's notebooks and
  ``benchmark_app`` run models: static shapes are faster on small models), ONNX Runtime ``quantize_static``
  with its defaults on the raw export, and torchao's pt2e (``X86InductorQuantizer`` + ``torch.compile``),
  reported as failed with the reason when it does not run.

Every runner of one model and thread count is timed round-robin in one process (each round times each
runner ``per_round`` times, so load drifts hit all alike, after a 0.1 s pause that lets the threads of the
runner before go idle), medians over all calls; thread counts fixed per
runner (PyTorch via ``nnlab.measure.torch_threads``, ONNX Runtime intra-op threads, OpenVINO
``INFERENCE_NUM_THREADS``). Calibration: ``--calib`` random images. Prints a markdown section.

    python bench/bench_runtimes.py [--models resnet18,mobilenet_v2,resnet50] [--threads 1,2] [--batches 1,8]
                                   [--rounds 8] [--calib 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression.int8 import Int8Config, to_int8  # noqa: E402
from nnlab.data.sets import ImageDataset  # noqa: E402
from nnlab.measure import interleaved_latency  # noqa: E402
from nnlab.runtimes import openvino as ovr  # noqa: E402
from nnlab.runtimes.base import as_input, sqnr_db, top1_agreement  # noqa: E402
from nnlab.runtimes.onnx import OrtRunner, export_onnx, quantize_static_defaults  # noqa: E402
from nnlab.runtimes.select import clear_cache  # noqa: E402
from nnlab.runtimes.torch_eager import TorchRunner  # noqa: E402

SHAPE = (3, 224, 224)
SETTLE_S = 0.1  # the ORT peer keeps its defaults (spinning threads): see interleaved_latency
FP32 = ("fp32 PyTorch eager", "fp32 ONNX Runtime", "fp32 OpenVINO")
PEERS = ("int8 peer OpenVINO+NNCF defaults", "int8 peer OpenVINO+NNCF static shape",
         "int8 peer ORT quantize_static defaults", "int8 peer torchao pt2e")


def build_model(arch: str, num_classes: int = 1000) -> torch.nn.Module:
    """Seeded random weights, with batch-norm statistics re-estimated on random inputs.

    The constructor's statistics (mean 0, variance 1) do not describe what flows through a random network:
    activations then shrink or grow layer by layer, and in MobileNetV2 so much that any int8 quantizer maps a
    layer to a single level (SQNR 0 dB). Re-estimated statistics (cumulative average over 64 random images,
    as after training) keep every layer's activations at unit scale, as in a trained model, so int8 fidelity
    figures mean something. Latency does not depend on the values.
    """
    import torchvision

    torch.manual_seed(0)  # a benchmark script, not library code
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, *SHAPE))
    return model.eval()


def fake_data(n: int, n_test: int = 4, dataset_id: str = "bench224") -> ImageDataset:
    """``n`` random 224-px images of 10 classes; the test split is the first ``n_test`` of them."""
    g = np.random.default_rng(0)
    x = torch.from_numpy(g.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8))
    y = torch.from_numpy((np.arange(n) % 10).astype(np.int64))
    return ImageDataset(id=dataset_id, name="random 224", source="random", classes=[str(i) for i in range(10)],
                        x_train=x, y_train=y, x_test=x[:n_test], y_test=y[:n_test])


class OVDefaults:
    """The OpenVINO peer as its docs use it: compile_model with only the thread count set."""

    def __init__(self, model: object, threads: int) -> None:
        self.threads, self.runtime = threads, "openvino-int8-cpu (defaults)"
        self.request = ovr.core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads}).create_infer_request()

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: as_input(x)})[0], copy=True)


class CompiledRunner:
    """A torch.compile'd module (torchao pt2e), threads fixed through torch_threads."""

    def __init__(self, fn: object, threads: int) -> None:
        self.fn, self.threads, self.runtime = fn, threads, "torchao-pt2e-inductor-int8-cpu"

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        from nnlab.threads import torch_threads

        with torch_threads(self.threads), torch.no_grad():
            return self.fn(torch.from_numpy(as_input(x))).numpy()


def torchao_pt2e(model: torch.nn.Module, calib: torch.Tensor, batch: int, threads: int) -> CompiledRunner:
    """torchao's documented pt2e flow at a static batch size; raises when any step fails."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    example = calib[:batch]
    with torch.no_grad():
        exported = torch.export.export(copy.deepcopy(model), (example,), strict=True).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        for i in range(0, len(calib) - batch + 1, batch):
            prepared(calib[i:i + batch])
        compiled = torch.compile(convert_pt2e(prepared), options={"freezing": True})
        compiled(example)  # compiles here; fails here on this torch/torchao pair
    return CompiledRunner(compiled, threads)


def build_artifacts(arch: str, model: torch.nn.Module, data: ImageDataset, calib: torch.Tensor,
                    workdir: Path) -> dict:
    """Everything thread-independent: exported files, quantized artifacts, and the build times."""
    art: dict = {"seconds": {}}
    t = time.perf_counter()
    art["onnx"] = workdir / f"{arch}.fp32.onnx"
    export_onnx(model, SHAPE, art["onnx"])
    art["seconds"]["onnx export"] = time.perf_counter() - t
    t = time.perf_counter()
    art["ov_fp32"] = ovr.convert(model, SHAPE)
    art["seconds"]["openvino convert"] = time.perf_counter() - t
    for backend in ("openvino", "onnxruntime", "torch-fx"):
        t = time.perf_counter()
        res = to_int8(model, data, Int8Config(backend=backend, threads=1), workdir / f"{arch}-{backend}", calib=calib)
        art[backend] = res
        art["seconds"][f"nnlab {backend}"] = time.perf_counter() - t
    t = time.perf_counter()
    import nncf
    import openvino as ov

    for key, batch in (("ov_peer", -1), ("ov_peer_static", 1)):  # a dynamic batch axis, and a static batch of 1
        peer = ov.convert_model(copy.deepcopy(model), example_input=calib[:1], input=[ov.PartialShape([batch, *SHAPE])])
        art[key] = nncf.quantize(peer, nncf.Dataset([c[None].numpy() for c in calib]))
    art["seconds"]["peer OpenVINO+NNCF"] = time.perf_counter() - t
    t = time.perf_counter()
    art["ort_peer"] = workdir / f"{arch}.ort-defaults.onnx"
    quantize_static_defaults(art["onnx"], art["ort_peer"], calib.numpy())
    art["seconds"]["peer ORT quantize_static"] = time.perf_counter() - t
    return art


def runners_for(arch: str, model: torch.nn.Module, data: ImageDataset, calib: torch.Tensor, art: dict,
                threads: int, batches: list[int], workdir: Path) -> tuple[dict, dict, dict]:
    """Runners for one thread count (and the nnlab default's own choice, made at this thread count)."""
    r: dict[str, object] = {"fp32 PyTorch eager": TorchRunner(copy.deepcopy(model), threads, "pytorch-eager-fp32-cpu"),
                            "fp32 ONNX Runtime": OrtRunner(art["onnx"], threads, "onnxruntime-fp32-cpu"),
                            "fp32 OpenVINO": ovr.OpenVINORunner(art["ov_fp32"], threads, "f32")}
    if "bf16" in ovr.supported_precisions():
        r["bf16 OpenVINO (info, not fp32)"] = ovr.OpenVINORunner(art["ov_fp32"], threads, "bf16")
    clear_cache()  # the default's choice is measured afresh for this thread count
    t = time.perf_counter()
    default = to_int8(model, data, Int8Config(threads=threads), workdir / f"{arch}-auto-{threads}", calib=calib)
    choice = default.extra["runtime_choice"]
    choice["seconds"] = time.perf_counter() - t
    r[f"int8 nnlab default (auto → {choice['choice']})"] = default.runner
    r["int8 nnlab openvino"] = ovr.OpenVINORunner(art["openvino"].artifact, threads, "f32", "openvino-int8-cpu")
    r["int8 nnlab onnxruntime"] = OrtRunner(art["onnxruntime"].artifact, threads, "onnxruntime-int8-static-cpu")
    r["int8 nnlab torch-fx"] = TorchRunner(art["torch-fx"].runner.module, threads, "pytorch-fx-int8-static-cpu")
    r["int8 peer OpenVINO+NNCF defaults"] = OVDefaults(art["ov_peer"], threads)
    r["int8 peer ORT quantize_static defaults"] = OrtRunner(art["ort_peer"], threads, "onnxruntime-int8-defaults",
                                                                 spin=True)
    per_batch: dict[int, dict] = {b: {} for b in batches}
    failures: dict[str, str] = {}
    for b in batches:
        static = art["ov_peer_static"].clone()
        static.reshape([b, *SHAPE])
        per_batch[b]["int8 peer OpenVINO+NNCF static shape"] = OVDefaults(static, threads)
        try:
            per_batch[b]["int8 peer torchao pt2e"] = torchao_pt2e(model, calib, b, threads)
        except Exception as exc:  # noqa: BLE001 - report why the peer does not run here
            failures["int8 peer torchao pt2e"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return r, per_batch, {"failures": failures, "choice": choice}


def pruning_section(threads: list[int], rounds: int, round_tos: list[int], amount: float = 0.5) -> list[str]:
    """ResNet-18 at 224 pruned to (1 − amount) MACs, each ``round_to``; pruned and unpruned timed in each fp32
    runtime, all interleaved per thread count. Returns markdown lines."""
    from compression.pruning import channel_prune
    from nnlab.measure import count_macs
    from nnlab.runtimes.select import fp32_factories

    base = build_model("resnet18")
    models = {"unpruned": base}
    macs = {"unpruned": count_macs(base, SHAPE)}
    for rt in round_tos:
        m = copy.deepcopy(base)
        st = channel_prune(m, SHAPE, 1000, "macs", amount, round_to=rt)
        models[f"round_to {rt}"] = m
        macs[f"round_to {rt}"] = st["macs_after"]
    out = [f"\n#### Channel pruning to {1 - amount:.0%} MACs: ResNet-18 at 224, batch 1, pruned ÷ unpruned in the "
           f"same runtime (L2 filter norm, layer scope, random weights; {rounds} interleaved rounds)\n",
           "| threads | runtime | unpruned ms | " + " | ".join(f"{k}: MACs ×, latency ×" for k in models if k != "unpruned")
           + " |", "|---:|---|---:|" + "---|" * (len(models) - 1)]
    x = np.random.default_rng(1).standard_normal((1, *SHAPE)).astype(np.float32)
    for t in threads:
        runners = {}
        for name, m in models.items():
            for rt_name, factory in fp32_factories(m, SHAPE, t).items():
                runners[(rt_name, name)] = factory()
        lat = interleaved_latency({f"{a}|{b}": r for (a, b), r in runners.items()}, x, rounds=rounds, per_round=3)
        for rt_name in ("openvino", "onnxruntime", "pytorch"):
            ref = lat[f"{rt_name}|unpruned"].median_ms
            cells = [f"{macs[k] / macs['unpruned']:.2f}×, **{lat[f'{rt_name}|{k}'].median_ms / ref:.2f}×**"
                     for k in models if k != "unpruned"]
            out.append(f"| {t} | {rt_name} | {ref:.2f} | " + " | ".join(cells) + " |")
    out.append("\nTarget: ≤ 0.6× latency at 50 % MACs in the same runtime.")
    return out


def fidelity(runners: dict, calib: torch.Tensor) -> dict[str, tuple[float, float]]:
    x = calib[:8].numpy()
    ref = runners["fp32 PyTorch eager"].predict_logits(x)
    return {k: (sqnr_db(ref, r.predict_logits(x)), top1_agreement(ref, r.predict_logits(x))) for k, r in runners.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2,resnet50")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calib", type=int, default=32, help="calibration images (random)")
    ap.add_argument("--prune-round-to", default="1,8,16", help="round_to values of the pruning section ('' skips it)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    thread_counts = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    t0 = time.perf_counter()
    data = fake_data(args.calib)
    calib = data.tensors("train")[0]
    rows: list[dict] = []
    notes: list[str] = []
    with stdout_to_stderr():  # stdout carries only the report
        with tempfile.TemporaryDirectory(prefix="nnlab-bench-rt-") as tmp:
            for arch in models:
                model = build_model(arch)
                art = build_artifacts(arch, model, data, calib, Path(tmp))
                notes.append(f"{arch} build seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in art["seconds"].items()))
                for threads in thread_counts:
                    runners, extra_runners, info = runners_for(arch, model, data, calib, art, threads, batches, Path(tmp))
                    fid = fidelity(runners, calib)
                    choice = info["choice"]
                    notes.append(f"{arch}, {threads} thread(s): nnlab default chose **{choice['choice']}** in "
                                 f"{choice['seconds']:.0f} s (quantize every backend, time them): "
                                 + ", ".join(f"{f['name']} {f['median_ms']:.2f} ms" for f in choice["figures"]
                                             if f.get("median_ms")))
                    for name, why in info["failures"].items():
                        notes.append(f"{arch}, {threads} thread(s): {name} failed: {why}")
                    for b in batches:
                        x = np.random.default_rng(1).standard_normal((b, *SHAPE)).astype(np.float32)
                        all_r = {**runners, **extra_runners[b]}
                        per_round = 3 if b == 1 else 1
                        lat = interleaved_latency(all_r, x, rounds=args.rounds, per_round=per_round, warmup=2,
                                                  settle_s=SETTLE_S)
                        for name, lt in lat.items():
                            s, a = fid.get(name, (float("nan"), float("nan")))
                            rows.append({"model": arch, "threads": threads, "batch": b, "runner": name,
                                         "runtime": lt.runtime, "median_ms": lt.median_ms, "p90_ms": lt.p90_ms,
                                         "repeats": lt.repeats, "sqnr_db": s, "agreement": a})
                        for name in info["failures"]:
                            rows.append({"model": arch, "threads": threads, "batch": b, "runner": name, "runtime": "",
                                         "median_ms": None, "p90_ms": None, "repeats": 0, "sqnr_db": float("nan"),
                                         "agreement": float("nan")})
                    del runners, extra_runners
        prune_lines = pruning_section(thread_counts, args.rounds, [int(r) for r in args.prune_round_to.split(",") if r]) \
            if args.prune_round_to else []
    report(rows, notes, args, time.perf_counter() - t0, prune_lines)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "notes": notes}, indent=2, default=str))
    return 0


def _best(rows: list[dict], names: tuple[str, ...] | None = None, prefix: str = "") -> tuple[str, float]:
    cands = [(r["runner"], r["median_ms"]) for r in rows if r["median_ms"] is not None
             and ((names and r["runner"] in names) or (prefix and r["runner"].startswith(prefix)))]
    return min(cands, key=lambda c: c[1]) if cands else ("", float("nan"))


def report(rows: list[dict], notes: list[str], args: argparse.Namespace, seconds: float,
           prune_lines: list[str]) -> None:
    print("### Runtimes at 224 px: fp32 and int8, nnlab against the peers (random weights, batch-norm statistics re-estimated on random inputs, 1000 classes)\n")
    print(f"All runners of one model and thread count timed round-robin in one process ({args.rounds} rounds; "
          f"3 calls per round at batch 1, 1 at batch 8, each runner's turn after a {SETTLE_S:g} s pause), medians; "
          f"threads fixed per runner; {args.calib} random "
          f"calibration images; torch {torch.__version__}, CPU {platform.processor() or platform.machine()} "
          f"({_cpu_name()}), 1-minute load average {os.getloadavg()[0]:.1f} at the end. Ratios inside one run are "
          f"what count.\n")
    print("| model | threads | batch | runner | runtime | median ms | p90 ms | ÷ fastest fp32 | ÷ fastest peer int8 "
          "| SQNR dB | top-1 agr. |")
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    keys = sorted({(r["model"], r["threads"], r["batch"]) for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    for model, threads, batch in keys:
        cell = [r for r in rows if (r["model"], r["threads"], r["batch"]) == (model, threads, batch)]
        fp32_name, fp32 = _best(cell, FP32)
        peer_name, peer = _best(cell, PEERS)
        for r in cell:
            m = r["median_ms"]
            if m is None:
                print(f"| {model} | {threads} | {batch} | {r['runner']} | — | failed | | | | | |")
                continue
            vs_peer = f"{m / peer:.2f}" if r["runner"].startswith("int8") and peer == peer else ""
            print(f"| {model} | {threads} | {batch} | {r['runner']} | {r['runtime']} | {m:.2f} | {r['p90_ms']:.2f} | "
                  f"{m / fp32:.2f} | {vs_peer} | {r['sqnr_db']:.1f} | {r['agreement']:.2f} |")
        default = next(r for r in cell if r["runner"].startswith("int8 nnlab default"))
        chosen = default["runner"].split("→ ")[-1].rstrip(")")
        verdicts.append(f"{model}, {threads} thread(s), batch {batch}: nnlab default int8 ({chosen}) "
                        f"{default['median_ms']:.2f} ms = **{default['median_ms'] / peer:.2f}×** the fastest peer "
                        f"int8 ({peer_name.removeprefix('int8 peer ')}, {peer:.2f} ms) and **{default['median_ms'] / fp32:.2f}×** the "
                        f"fastest fp32 ({fp32_name.removeprefix('fp32 ')}, {fp32:.2f} ms)")
    print("\nTargets: nnlab default int8 ≤ 1.0× the fastest peer int8 and ≤ 0.35× the fastest fp32 at batch 1 "
          "(ResNet-18, MobileNetV2); within 1.05× of the peer at batch 8 and on ResNet-50.\n")
    for v in verdicts:
        print(f"- {v}")
    print()
    for n in notes:
        print(f"- {n}")
    for line in prune_lines:
        print(line)
    print(f"\nTotal {seconds:.0f} s.")


def _cpu_name() -> str:
    try:
        return ovr.core().get_property("CPU", "FULL_DEVICE_NAME")
    except Exception:  # noqa: BLE001 - cosmetic
        return "unknown CPU"


@contextlib.contextmanager
def stdout_to_stderr():
    """While measuring, everything printed to stdout (NNCF's progress bars and log lines, the runtimes' own
    messages, at the file-descriptor level) goes to stderr, so stdout carries only the markdown report."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
