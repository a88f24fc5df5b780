"""Choose the fastest runtime for a model by a short interleaved measurement on this machine.

:func:`select` builds every candidate runner, optionally checks each one (fidelity), times the ones that
pass round-robin on the same input with the thread count fixed (:func:`nnlab.measure.interleaved_latency`),
and returns the fastest with every candidate's figures, so pages can show why. The choice is cached per
key — for models: (content hash, input shape, threads, batch, kind) — for the life of the process; a cached
choice builds only the chosen runner.

:func:`fastest_fp32_runner` is the bulk-pass entry point: candidates eager PyTorch, ONNX Runtime fp32 and
OpenVINO fp32, each verified against eager PyTorch on a probe batch (top-1 agreement 100 %, max logit
difference ≤ 1e-3) before it may be chosen; eager PyTorch is the fallback and the note says why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nnlab.measure import interleaved_latency
from nnlab.runtimes.base import Runner, RunnerFactory, as_input, torch_logits
from nnlab.runtimes.candidates import (
    BULK_CANDIDATES,
    FP32_CANDIDATES,
    fidelity_check,
    fp32_factories,
)

# A check gets (candidate name, runner) and returns (accepted, facts to show beside the figures).
Check = Callable[[str, Runner], tuple[bool, dict]]  # see nnlab.runtimes.candidates.fidelity_check

# When the runner-up's median is within this fraction of the fastest one's, every candidate is timed again
# over CLOSE_CALL_ROUNDS times as many rounds, and that measurement decides (and is the one shown). Two
# runtimes within a few percent of each other swap places from one 5-round measurement to the next on a
# shared machine: MobileNetV2 int8 at 224, 1 thread, once chose ONNX Runtime at 3.74 ms against OpenVINO's
# 3.81 ms, and then ran 5.15 ms against OpenVINO's 3.83 ms in a benchmark right after (1.34×).
CLOSE_CALL = 0.10
CLOSE_CALL_ROUNDS = 2

_CACHE: dict[tuple, dict] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class Selection:
    """The outcome of a selection.

    Attributes:
        choice: Name of the chosen candidate ("openvino", "onnxruntime", "pytorch" …).
        runtime: The chosen runner's runtime name (e.g. "openvino-fp32-cpu").
        runner: The chosen runner, ready to use.
        threads: Thread count every candidate ran with.
        batch: Batch size of the measurement.
        figures: One dict per candidate: ``name``, ``runtime``, ``status`` ("ok", "rejected", "failed"),
            ``median_ms``, ``p90_ms``, ``min_ms``, ``repeats``, ``remeasured`` (True after a close call: the
            figures are from the longer second measurement), ``note`` and whatever the check reported.
        rounds: Round-robin rounds of the measurement.
        cached: True when the choice came from the cache (the figures are the original measurement's).
        note: Why this choice (e.g. a fallback's reason).
    """

    choice: str
    runtime: str
    runner: Runner | None
    threads: int
    batch: int
    figures: list[dict] = field(default_factory=list)
    rounds: int = 0
    cached: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: everything but the runner."""
        d = {k: v for k, v in self.__dict__.items() if k != "runner"}
        d["figures"] = [dict(f) for f in self.figures]
        return d

    def summary(self) -> str:
        """One line: the choice, then each candidate's median (or why it was left out)."""
        parts = []
        for f in sorted(self.figures, key=lambda f: (f.get("median_ms") is None, f.get("median_ms") or 0)):
            if f.get("median_ms") is not None:
                parts.append(f"{f['name']} {f['median_ms']:.2f} ms")
            else:
                parts.append(f"{f['name']} {f['status']}")
        cached = ", cached" if self.cached else ""
        return (f"{self.choice} ({self.runtime}; {self.threads} thread(s), batch {self.batch}, medians of "
                f"{self.rounds} interleaved rounds{cached}): " + ", ".join(parts))


def clear_cache() -> None:
    """Forget every cached choice (tests; a changed machine)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def model_key(model: nn.Module, input_shape: tuple[int, ...], threads: int, batch: int, kind: str) -> tuple:
    """Cache key of a model's runtime choice: content hash, input shape, threads, batch and what is chosen."""
    from nnlab.models.registry import model_hash

    return (model_hash(model), tuple(int(s) for s in input_shape), int(threads), int(batch), kind)


def select(candidates: dict[str, RunnerFactory], x: np.ndarray | torch.Tensor, threads: int,
           key: tuple | None = None, rounds: int = 5, per_round: int = 3, check: Check | None = None,
           fallback: str | None = None) -> Selection:
    """Build, check and time every candidate; return the fastest.

    When the runner-up is within :data:`CLOSE_CALL` of the fastest, every candidate is timed again over
    :data:`CLOSE_CALL_ROUNDS` times as many rounds, and that measurement decides (its figures are the ones
    returned, so the choice is always the fastest figure shown).

    Args:
        candidates: Name → factory building the runner (with ``threads``); a factory may raise (the
            candidate is then listed as failed with the reason).
        x: The input every candidate is timed on (its batch size is the measurement's).
        threads: The thread count the factories use (stated in the result).
        key: Cache key (see :func:`model_key`); None: no caching.
        rounds: Round-robin rounds; each times every candidate ``per_round`` times.
        check: Accepts or rejects a built runner (e.g. fidelity); rejected ones are not timed.
        fallback: Candidate chosen when none is accepted (its factory must work); None: raise.

    Raises:
        RuntimeError: When no candidate could be built and accepted and there is no fallback.
    """
    x = as_input(x)
    if key is not None:
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
        if hit is not None and hit["choice"] in candidates:
            try:
                runner = candidates[hit["choice"]]()
                if check is not None and not check(hit["choice"], runner)[0]:
                    runner = None
            except Exception:  # noqa: BLE001 - the cached choice no longer builds or passes: measure again
                runner = None
            if runner is not None:
                return Selection(hit["choice"], runner.runtime, runner, threads, len(x),
                                 [dict(f) for f in hit["figures"]], hit["rounds"], True, hit["note"])
    figures: dict[str, dict] = {}
    built: dict[str, Runner] = {}
    for name, factory in candidates.items():
        fig: dict[str, Any] = {"name": name, "runtime": "", "status": "ok", "median_ms": None, "p90_ms": None,
                               "min_ms": None, "repeats": 0, "remeasured": False, "note": ""}
        figures[name] = fig
        try:
            runner = factory()
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot take this model is left out, with why
            fig.update(status="failed", note=f"{type(exc).__name__}: {str(exc)[:200]}")
            continue
        fig["runtime"] = runner.runtime
        if check is not None:
            try:
                ok, facts = check(name, runner)
            except Exception as exc:  # noqa: BLE001 - a runner that cannot even run the probe
                ok, facts = False, {"note": f"{type(exc).__name__}: {str(exc)[:200]}"}
            fig.update(facts)
            if not ok:
                fig["status"] = "rejected"
                continue
        built[name] = runner
    note = ""
    if not built:
        reasons = "; ".join(f"{f['name']}: {f['status']} ({f['note']})" for f in figures.values())
        if fallback is None or fallback not in candidates:
            raise RuntimeError(f"no runtime could run this model: {reasons}")
        runner = candidates[fallback]()
        note = f"fell back to {fallback}: {reasons}"
        return Selection(fallback, runner.runtime, runner, threads, len(x), list(figures.values()), 0, False, note)
    lat = interleaved_latency(built, x, rounds=rounds, per_round=per_round)
    ranked = sorted(lat, key=lambda k: lat[k].median_ms)
    close = len(ranked) > 1 and lat[ranked[1]].median_ms <= lat[ranked[0]].median_ms * (1 + CLOSE_CALL)
    if close:  # one short measurement cannot tell them apart on a shared machine: time them all again, longer
        lat = interleaved_latency(built, x, rounds=CLOSE_CALL_ROUNDS * rounds, per_round=per_round)
    for name, lt in lat.items():
        figures[name].update(median_ms=round(lt.median_ms, 4), p90_ms=round(lt.p90_ms, 4), min_ms=round(lt.min_ms, 4),
                             repeats=lt.repeats, threads=lt.threads, remeasured=close)
    choice = min(lat, key=lambda k: lat[k].median_ms)
    left_out = [f for f in figures.values() if f["status"] != "ok"]
    notes = []
    if close:
        notes.append(f"{ranked[0]} and {ranked[1]} were within {CLOSE_CALL:.0%} of each other: all were timed again "
                     f"over {CLOSE_CALL_ROUNDS * rounds} rounds, and those figures decided")
    if left_out:
        notes.append("left out: " + "; ".join(f"{f['name']} {f['status']} ({f['note']})" for f in left_out))
    note = "; ".join(notes)
    sel = Selection(choice, built[choice].runtime, built[choice], threads, len(x), list(figures.values()), rounds,
                    False, note)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = {"choice": choice, "figures": sel.figures, "rounds": rounds, "note": note}
    return sel


# --- fp32: the bulk-pass runtime ------------------------------------------------------------------------

__all__ = ["BULK_CANDIDATES", "FP32_CANDIDATES", "Selection", "fastest_fp32_runner", "fidelity_check",
           "fp32_factories", "select"]


def fastest_fp32_runner(model: nn.Module, input_shape: tuple[int, ...], threads: int | None = None,
                        probe: np.ndarray | torch.Tensor | None = None, batch: int = 1, rounds: int = 5,
                        per_round: int | None = None, names: tuple[str, ...] = FP32_CANDIDATES, tolerance: float = 1e-3,
                        cache: bool = True) -> Selection:
    """The fastest fp32 runner for ``model`` on this machine, verified against eager PyTorch.

    Every candidate (eager PyTorch, ONNX Runtime fp32, OpenVINO fp32) is built with ``threads``, checked on
    the probe batch (top-1 agreement 100 %, max logit difference ≤ ``tolerance``), and the verified ones
    are timed interleaved at ``batch``; the fastest wins. When no other runtime is verified, eager PyTorch
    is returned and ``note`` says why.

    Args:
        model: The float model (not changed; copies are converted).
        input_shape: ``(C, H, W)``.
        threads: Intra-op threads of every candidate (default: PyTorch's current count).
        probe: Normalised inputs for the fidelity check (default: 8 seeded random inputs).
        batch: Batch size of the timing (bulk passes: their batch size; latency: 1).
        rounds: Interleaved rounds of the timing.
        per_round: Calls per candidate and round (default: 3 at batch ≤ 4, else 1, so that a bulk-sized batch
            stays a short measurement).
        names: Candidates to consider.
        tolerance: Largest accepted absolute logit difference.
        cache: Reuse (and store) the choice for this model content, shape, threads and batch.
    """
    threads = int(threads or torch.get_num_threads())
    per_round = per_round or (3 if batch <= 4 else 1)
    if probe is None:
        probe = np.random.default_rng(0).standard_normal((8, *input_shape)).astype(np.float32)
    probe = as_input(probe)
    ref_model = model if not model.training else _eval_copy(model)
    reference = torch_logits(ref_model, probe)
    x = np.random.default_rng(1).standard_normal((batch, *input_shape)).astype(np.float32)
    key = model_key(model, input_shape, threads, batch, f"fp32:{','.join(names)}:{tolerance:g}") if cache else None
    factories = fp32_factories(model, input_shape, threads, tuple(dict.fromkeys(("pytorch", *names))))
    sel = select(factories, x, threads, key=key, rounds=rounds, per_round=per_round,
                 check=fidelity_check(reference, probe, ref_model, tolerance), fallback="pytorch")
    if sel.choice == "pytorch" and not sel.note.startswith("fell back"):
        others = [f for f in sel.figures if f["name"] != "pytorch"]
        head = "eager PyTorch measured fastest" if others else "eager PyTorch only"
        sel.note = f"{head}; {sel.note}" if sel.note else head
    return sel


def _eval_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()
