"""Overview: the selected model (layers, parameters, MACs, size, latency, accuracy) and dataset."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

import nnlab.jobs.kinds
from nnlab import measure
from nnlab.data.viz import as_image, display_scale, grid
from nnlab.estimate import wilson_interval
from nnlab.i18n import _, num
from nnlab.jobs import manager as jobs
from nnlab.runtimes.precision import MIN_AGREEMENT, cpu_support
from nnlab.ui import session, widgets

# a pass over more images than this shows its first sample's accuracy and streams; a smaller one is simply awaited
STREAM_MIN = int(os.environ.get("NNLAB_STREAM_MIN", "1000"))

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("nnlab · Overview"))
cur = session.current()
data, rec = cur.data, cur.record
ws = session.workspace()

st.caption(_("Dataset: **{data}** — {source}. Model: **{model}** (`{id}`).").format(
    data=data.name, source=data.source, model=rec.name, id=cur.model_id))
st.caption(_("Preprocessing (owned by the model, used by every page): {pp}").format(pp=data.preprocessing.describe())
           + (f" — {data.preprocessing.source}" if data.preprocessing.source else "") + ".")

# the session's switch (kept under its own key, so it survives visits to other pages): bulk passes in fp32 only
st.session_state.setdefault("fp32_only", False)
st.toggle(_("fp32 only for bulk passes"), value=st.session_state["fp32_only"], key="_fp32_only_toggle",
          on_change=lambda: st.session_state.update(fp32_only=st.session_state["_fp32_only_toggle"]),
          help=_("Off (default): where the CPU computes bf16 natively, the evaluation pass may run its bulk in bf16 "
                 "once a fidelity gate on its first images passes. On: every pass this session starts runs in fp32, "
                 "and a stored pass that ran in bf16 is run again in fp32."))
fp32_only = bool(st.session_state["fp32_only"])


def _interval(correct: int, n: int) -> str:
    lo, hi = wilson_interval(correct, n)
    return _("95 % interval {lo}–{hi}").format(lo=num(lo, ".1%"), hi=num(hi, ".1%"))


def _test_pass():
    """The stored test pass, or None while it streams (its first numbers are shown by :func:`_streaming`)."""
    key = (cur.model_id, data.id, "test")
    stored = nnlab.jobs.kinds.load_evaluation(ws, *key)
    if stored is not None and not (fp32_only and nnlab.jobs.kinds.stored_precision(ws, *key) not in ("", "fp32")):
        return stored, None
    params = {"model_id": cur.model_id, "data": cur.data_ref, "split": "test"}
    if fp32_only:
        params["precision"] = "fp32"
    old = jobs.find("evaluate", params)
    if old is not None and old.status in (jobs.FAILED, jobs.INTERRUPTED, jobs.CANCELLED):
        session.show_outcome(old, _("The evaluation"))
        st.stop()
    # the result this page needs is missing (or in bf16 against the switch): a finished job is run again
    job = jobs.submit("evaluate", params, owner=session.owner(),
                      rerun=stored is not None or (old is not None and old.status == jobs.DONE))
    skey = nnlab.jobs.kinds.stream_key(*key)
    slot = st.empty()
    with slot.container():
        bar = st.progress(0.0, text=_("Evaluating the model on the test split…"))
    while job.active:  # until the first sample's accuracy is there (a large split), or the end (a small one)
        counts = ws.load_run(skey) or {}
        if counts.get("phase") in ("gate", "rest") and counts.get("total", 0) > STREAM_MIN:
            slot.empty()
            return None, job
        snap = job.snapshot()
        bar.progress(min(1.0, snap["fraction"]), text=session.progress_text(snap))
        job.wait(0.2)
    slot.empty()
    if not session.show_outcome(job, _("The evaluation")):
        st.stop()
    res = nnlab.jobs.kinds.load_evaluation(ws, *key)
    if res is None:
        st.error(_("The evaluation finished but its results cannot be read."))
        st.stop()
    return res, None


ev, streaming_job = _test_pass()


@st.fragment(run_every=1.0)
def _streaming(job_key: str) -> None:
    """The running accuracy of a pass that is still going: the first sample's, then over every image done."""
    job = jobs.get(job_key)
    if job is None or not job.active:
        st.rerun()  # the pass has ended: the whole page shows its result (or why it failed)
    counts = ws.load_run(nnlab.jobs.kinds.stream_key(cur.model_id, data.id, "test")) or {}
    done, total, correct = int(counts.get("done", 0)), int(counts.get("total", 0)), int(counts.get("correct", 0))
    if not done:
        st.caption(_("Evaluating the model on the test split…"))
        return
    first, first_ok = int(counts.get("first_images", 0)), int(counts.get("first_correct", 0))
    st.metric(_("Test accuracy") + " " + _("(running)"), "≈ " + num(correct / done, ".2%"),
              help=_("Top-1 on the images of the test split done so far: a sample stratified by class first, then "
                     "the rest in a random order, so the running figure estimates the whole split's."))
    st.progress(done / max(1, total), text=_("{done} of {total} images · {interval}").format(
        done=num(done, ","), total=num(total, ","), interval=_interval(correct, done)))
    if first:
        st.caption(_("First number: {acc} on {n} images stratified by class ({interval}), after {s} s.").format(
            acc=num(first_ok / first, ".2%"), n=num(first, ","), interval=_interval(first_ok, first),
            s=num(float(counts.get("first_seconds") or 0.0), ".1f")))
    if counts.get("gate_note"):
        st.caption(_("Runtime of the rest: {runtime}.").format(runtime=counts.get("runtime", "")))


rt = ws.load_run(nnlab.jobs.kinds.runtime_key(cur.model_id, data.id, "test"))
if streaming_job is not None:
    with st.container(border=True):
        _streaming(streaming_job.key)
c1, c2, c3, c4, c5 = st.columns(5)
if ev is not None:
    c1.metric(_("Test accuracy"), num(ev.accuracy, ".2%"),
              help=_("Top-1 on the whole test split (the shared evaluation pass).") + " " + _(
                  "{interval} over {n} images (Wilson).").format(
                  interval=_interval(int((ev.preds == ev.labels).sum()), len(ev.labels)), n=num(len(ev.labels), ",")))


def _bulk_caption(rt: dict) -> None:
    """Where the stored pass ran: runtime, precision and the fidelity gate's verdict (or why bf16 was not tried)."""
    st.caption(_("Evaluation pass (every test image, stored for every page) ran in **{runtime}**: {summary}.").format(
        runtime=rt.get("fp32_runtime", rt["runtime"]), summary=rt["summary"]))
    g, code = rt.get("gate") or {}, rt.get("gate_code", "")
    cpu = cpu_support()
    features = ", ".join(cpu["features"]) or _("none")
    if code == "used":
        st.caption(_("The first {first} images ran in fp32, the rest in **bf16** ({runtime}): the fidelity gate "
                     "passed — top-1 agreement with fp32 {agree} on {n} images (needs ≥ {need}), logit error max "
                     "{max}, mean {mean}; {fast} against {slow} ms per image.").format(
            first=num(rt.get("first_images", 0), ","), runtime=rt["runtime"], agree=num(g["agreement"], ".2%"),
            n=num(g["images"], ","), need=num(MIN_AGREEMENT, ".1%"), max=num(g["max_abs_err"], ".3g"),
            mean=num(g["mean_abs_err"], ".3g"), fast=num(g["reduced_ms"], ".2f"), slow=num(g["fp32_ms"], ".2f")))
    elif code == "refused":
        st.warning(_("bf16 ({runtime}) was refused by the fidelity gate: top-1 agreement with fp32 {agree} on {n} "
                     "images (needs ≥ {need}); logit error max {max}, mean {mean}. The pass ran in fp32.").format(
            runtime=g["runtime"], agree=num(g["agreement"], ".2%"), n=num(g["images"], ","),
            need=num(MIN_AGREEMENT, ".1%"), max=num(g["max_abs_err"], ".3g"), mean=num(g["mean_abs_err"], ".3g")))
    elif code == "slower":
        st.caption(_("bf16 ({runtime}) passed the fidelity gate (top-1 agreement {agree}, logit error max {max}) "
                     "but ran no faster ({fast} against {slow} ms per image): the pass stayed in fp32.").format(
            runtime=g["runtime"], agree=num(g["agreement"], ".2%"), max=num(g["max_abs_err"], ".3g"),
            fast=num(g["reduced_ms"], ".2f"), slow=num(g["fp32_ms"], ".2f")))
    elif code == "forced":
        st.caption(_("Precision: fp32, as the switch asks."))
    elif code == "unsupported":
        st.info(_("Precision: fp32. This CPU has no native bf16 (AMX-BF16 or AVX-512 BF16), so no reduced precision "
                  "was tried (CPU features found: {features}).").format(features=features))
    elif code == "few":
        st.caption(_("Precision: fp32 (the split is too small to pay for building and checking a bf16 runtime)."))
    elif code == "whole":
        st.caption(_("Precision: fp32 (the first sample is the whole split)."))
    elif code == "failed":
        st.warning(_("bf16 could not be built here; the pass ran in fp32: {why}").format(why=rt.get("gate_note", "")))
    if code and code != "unsupported":
        st.caption(_("CPU features for reduced precision: {features}{amx}; int8 is not tried for bulk passes (it "
                     "needs a calibrated copy first).").format(
            features=features, amx="" if cpu["amx"] else _(" (no AMX)")))


if rt and streaming_job is None:
    _bulk_caption(rt)
full_train = nnlab.jobs.kinds.load_evaluation(ws, cur.model_id, data.id, "train")
if full_train is not None:  # the shared pass over every training image: the number the report and E_train use
    c2.metric(_("Train accuracy"), num(full_train.accuracy, ".2%"),
              help=_("Top-1 on all {n} training images (the shared evaluation pass).").format(
                  n=num(len(full_train.labels), ",")))
else:
    n_tr = int(rec.extra.get("train_accuracy_samples") or min(10000, len(data.y_train)))
    c2.metric(_("Train accuracy"), num(rec.train_accuracy, ".2%"),
              help=_("Top-1 on the first {n} training images, measured with the model; the Error-vs-goal page runs "
                     "the pass over every training image.").format(n=num(n_tr, ",")))
c3.metric(_("Parameters"), num(rec.params, ","), help=_("{n} nonzero").format(n=num(rec.nonzero_params, ",")))
c4.metric(_("MACs / image"), num(rec.macs / 1e6, ".2f") + " M", help=_("torch.utils.flop_counter, FLOPs / 2"))
size = num(rec.size_bytes / 1024, ".0f") + " KiB" if rec.size_bytes else _("in memory")
c5.metric(_("Size on disk"), size, help=_("gzipped: {kib} KiB").format(kib=num(rec.size_gzip_bytes / 1024, ".0f"))
          if rec.size_bytes else None)

lat = rec.latency
if rec.latencies:
    st.write(_("**Latency as fp32 in every runtime** (timed together, interleaved rounds; medians, p90 in brackets). "
               "Compressed variants are compared with the base in their own runtime."))
    st.dataframe(pd.DataFrame(measure.runtime_rows(rec)), hide_index=True, key="overview_runtimes")
    if not measure.comparable(rec):
        st.caption(_("Timed by an older harness: measure it again from the Pareto page."))
elif lat:
    l1 = lat.get("1", {})
    l32 = lat.get("32", {})
    nan = float("nan")
    st.write(_("Latency (CPU, {threads} threads, {runtime}): batch 1 median **{b1} ms** (p90 {b1p}); batch 32 median "
               "**{b32} ms** (p90 {b32p}) — timed by an older harness, in one runtime only.").format(
        threads=l1.get("threads", "?"), runtime=l1.get("runtime", ""), b1=num(l1.get("median_ms", nan)),
        b1p=num(l1.get("p90_ms", nan)), b32=num(l32.get("median_ms", nan)), b32p=num(l32.get("p90_ms", nan))))

left, right = st.columns([3, 2])
with left:
    st.subheader(_("Layers"))
    layers = pd.DataFrame(rec.layers)
    cols = [c for c in ("layer", "type", "output_shape", "params", "nonzero") if c in layers.columns]
    st.dataframe(layers[cols], hide_index=True, width="stretch", height=320)
with right:
    st.subheader(_("Training history"))
    if cur.history:
        h = pd.DataFrame(cur.history)
        fig = px.line(h, x="epoch", y=["train_acc", "test_acc"], markers=True, labels={"value": _("accuracy")})
        fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10))
        widgets.chart(fig, key="overview_history")
    else:
        st.info(_("No training history for this model (it was not trained by nnlab)."))

st.subheader(_("Dataset"))
counts = pd.DataFrame({"class": data.classes, "train": data.class_counts("train"), "test": data.class_counts("test")})
d1, d2 = st.columns([2, 3])
with d1:
    c, h, w = data.input_shape
    st.write(_("{train} training and {test} test images, seen by the model as {c}×{h}×{w}").format(
        train=num(len(data.y_train), ","), test=num(len(data.y_test), ","), c=c, h=h, w=w)
        + (_("; {n} unreadable file(s) left out").format(n=num(len(data.unreadable), ",")) if data.unreadable else "")
        + ".")
    st.dataframe(counts, hide_index=True, width="stretch")
with d2:
    rng = np.random.default_rng(0)
    labels = data.y_test.numpy()
    picks = [int(rng.choice(np.flatnonzero(labels == c))) for c in range(data.num_classes) if (labels == c).any()]
    picks = picks[:10]
    scale = display_scale(data.input_shape[1], 64)
    st.image(grid([as_image(data.x_test[i], scale) for i in picks], ncols=min(10, len(picks))),
             caption=" · ".join(data.classes[int(labels[i])] for i in picks))

st.subheader(_("Report"))
st.caption(_("Everything nnlab knows about this model in one file to share: the model card, the diagnosis against "
             "your goal, per-class metrics, the worst errors with attributions, the data checks and the Pareto plot "
             "with the variants you pick (here: the frontier of this model's variants by size)."))
_variants = [v for v in ws.list_variants() if v.parent == cur.model_id and v.status == "ok"]
if _variants:
    from compression.pareto import frontier

    _front = [r.id for r in frontier([rec, *_variants], "size") if r.id != rec.id][:4]
else:
    _front = []
session.report_panel(cur, _front, key="overview_report")
