"""Overview: the selected model (layers, parameters, MACs, size, latency, accuracy) and dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

import nnlab.jobs.kinds
from nnlab import measure
from nnlab.data.viz import as_image, display_scale, grid
from nnlab.ui import session, widgets

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title("nnlab · Overview")
cur = session.current()
data, rec = cur.data, cur.record
ev = session.evaluation("test", cur)

st.caption(f"Dataset: **{data.name}** — {data.source}. Model: **{rec.name}** (`{cur.model_id}`).")
st.caption(f"Preprocessing (owned by the model, used by every page): {data.preprocessing.describe()}"
           + (f" — {data.preprocessing.source}" if data.preprocessing.source else "") + ".")
rt = session.workspace().load_run(nnlab.jobs.kinds.runtime_key(cur.model_id, data.id, "test"))
if rt:
    st.caption(f"Evaluation pass (every test image, stored for every page) ran in **{rt['runtime']}**: "
               f"{rt['summary']}.")
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Test accuracy", f"{ev.accuracy:.2%}", help="Top-1 on the whole test split (the shared evaluation pass).")
full_train = nnlab.jobs.kinds.load_evaluation(session.workspace(), cur.model_id, data.id, "train")
if full_train is not None:  # the shared pass over every training image: the number the report and E_train use
    c2.metric("Train accuracy", f"{full_train.accuracy:.2%}",
              help=f"Top-1 on all {len(full_train.labels):,} training images (the shared evaluation pass).")
else:
    n_tr = int(rec.extra.get("train_accuracy_samples") or min(10000, len(data.y_train)))
    c2.metric("Train accuracy", f"{rec.train_accuracy:.2%}",
              help=f"Top-1 on the first {n_tr:,} training images, measured with the model; the Error-vs-goal "
                   "page runs the pass over every training image.")
c3.metric("Parameters", f"{rec.params:,}", help=f"{rec.nonzero_params:,} nonzero")
c4.metric("MACs / image", f"{rec.macs / 1e6:.2f} M", help="torch.utils.flop_counter, FLOPs / 2")
size = f"{rec.size_bytes / 1024:.0f} KiB" if rec.size_bytes else "in memory"
c5.metric("Size on disk", size, help=f"gzipped: {rec.size_gzip_bytes / 1024:.0f} KiB" if rec.size_bytes else None)

lat = rec.latency
if rec.latencies:
    st.write("**Latency as fp32 in every runtime** (timed together, interleaved rounds; medians, p90 in brackets). "
             "Compressed variants are compared with the base in their own runtime.")
    st.dataframe(pd.DataFrame(measure.runtime_rows(rec)), hide_index=True, key="overview_runtimes")
    if not measure.comparable(rec):
        st.caption("Timed by an older harness: measure it again from the Pareto page.")
elif lat:
    l1 = lat.get("1", {})
    l32 = lat.get("32", {})
    st.write(f"Latency (CPU, {l1.get('threads', '?')} threads, {l1.get('runtime', '')}): batch 1 median "
             f"**{l1.get('median_ms', float('nan')):.2f} ms** (p90 {l1.get('p90_ms', float('nan')):.2f}); batch 32 "
             f"median **{l32.get('median_ms', float('nan')):.2f} ms** (p90 {l32.get('p90_ms', float('nan')):.2f}) — "
             "timed by an older harness, in one runtime only.")

left, right = st.columns([3, 2])
with left:
    st.subheader("Layers")
    layers = pd.DataFrame(rec.layers)
    cols = [c for c in ("layer", "type", "output_shape", "params", "nonzero") if c in layers.columns]
    st.dataframe(layers[cols], hide_index=True, width="stretch", height=320)
with right:
    st.subheader("Training history")
    if cur.history:
        h = pd.DataFrame(cur.history)
        fig = px.line(h, x="epoch", y=["train_acc", "test_acc"], markers=True, labels={"value": "accuracy"})
        fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10))
        widgets.chart(fig, key="overview_history")
    else:
        st.info("No training history for this model (it was not trained by nnlab).")

st.subheader("Dataset")
counts = pd.DataFrame({"class": data.classes, "train": data.class_counts("train"), "test": data.class_counts("test")})
d1, d2 = st.columns([2, 3])
with d1:
    c, h, w = data.input_shape
    st.write(f"{len(data.y_train):,} training and {len(data.y_test):,} test images, seen by the model as "
             f"{c}×{h}×{w}" + (f"; {len(data.unreadable):,} unreadable file(s) left out" if data.unreadable else "")
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

st.subheader("Report")
st.caption("Everything nnlab knows about this model in one file to share: the model card, the diagnosis against "
           "your goal, per-class metrics, the worst errors with attributions, the data checks and the Pareto plot "
           "with the variants you pick (here: the frontier of this model's variants by size).")
_variants = [v for v in session.workspace().list_variants() if v.parent == cur.model_id and v.status == "ok"]
if _variants:
    from compression.pareto import frontier

    _front = [r.id for r in frontier([rec, *_variants], "size") if r.id != rec.id][:4]
else:
    _front = []
session.report_panel(cur, _front, key="overview_report")
