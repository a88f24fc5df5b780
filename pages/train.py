"""Train or fine-tune: any architecture on the selected dataset, as a background job; the result is a model in
the workspace, selectable in the sidebar like the demo."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from nnlab.jobs import manager as jobs
from nnlab.jobs.kinds import INITS, trained_model_id
from nnlab.models.registry import arch_label
from nnlab.train import OPTIMIZERS, SCHEDULES, TrainConfig
from nnlab.ui import session, widgets

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title("Train or fine-tune")
cur = session.current()
data = cur.data
arch = cur.arch
st.caption(f"Trains **{arch_label(arch)}** (the architecture chosen in "
           f"the sidebar) on **{data.name}** ({len(data.y_train):,} training images, {data.num_classes} classes, "
           f"input {'×'.join(map(str, data.input_shape))}) in the background: you may leave the page. The result "
           "is stored in the workspace and appears in the sidebar under *Weights*.")

INIT_LABELS = {"scratch": "From scratch (seeded random weights)", "pretrained": "From pretrained weights (hub)",
               "model": f"From the current model ({cur.record.name})"}
c1, c2, c3 = st.columns(3)
init_kind = c1.radio("Start from", list(INITS), key="train_init", format_func=INIT_LABELS.get, index=2)
epochs = int(c2.number_input("Epochs", 1, 500, 3, key="train_epochs"))
lr = float(c3.number_input("Learning rate", 1e-6, 5.0, 1e-3, key="train_lr", format="%.1e", step=5e-4))
d1, d2, d3, d4 = st.columns(4)
optimizer = d1.selectbox("Optimiser", OPTIMIZERS, key="train_opt")
schedule = d2.selectbox("Learning-rate schedule", SCHEDULES, key="train_schedule",
                        help="onecycle: warm-up, then annealing; cosine: annealing from the rate; constant")
batch = int(d3.number_input("Batch size", 1, 4096, 64, key="train_batch"))
wd = float(d4.number_input("Weight decay", 0.0, 1.0, 1e-4, key="train_wd", format="%.1e", step=1e-4))
a1, a2, a3 = st.columns(3)
flip = a1.checkbox("Random horizontal flips", key="train_flip", value=True)
crop = float(a2.number_input("Random crop padding (share of the side)", 0.0, 0.5, 0.125, step=0.025,
                             key="train_crop", help="0 turns random crops off"))
smoothing = float(a3.number_input("Label smoothing", 0.0, 0.9, 0.0, step=0.05, key="train_smooth"))
name = st.text_input("Name (optional)", key="train_name", max_chars=120)

try:
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch, weight_decay=wd, optimizer=optimizer,
                      schedule=schedule, flip=flip, crop=crop, label_smoothing=smoothing)
except ValueError as exc:
    st.error(f"The settings are not valid: {exc}")
    st.stop()
init = {"kind": init_kind} if init_kind != "model" else {"kind": "model", "model_id": cur.model_id}
config = cfg.to_dict()
model_id = trained_model_id(arch, data.id, init, config)
params = {"data": cur.data_ref, "arch": arch, "init": init, "config": config, "model_id": model_id,
          "name": name.strip()}
job = jobs.find("train-model", params)
running = job is not None and job.active
if st.button("Train", key="train_run", type="primary", disabled=running) or running:
    job = session.run_job("train-model", params, retry=not running, what="The training",
                          title=f"Training **{arch}** on {data.name}…")
if job is not None and job.status == jobs.DONE:
    res = job.result or {}
    st.success(f"Done in {res.get('seconds', 0):.0f} s: test accuracy {res.get('accuracy', float('nan')):.2%}. "
               f"Stored as `{res.get('model_id')}`.")
    hist = pd.DataFrame(res.get("history", []))
    if not hist.empty:
        fig = px.line(hist, x="epoch", y=["train_acc", "test_acc"], markers=True, labels={"value": "accuracy"})
        fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10))
        widgets.chart(fig, key="train_history")
        st.dataframe(hist, hide_index=True, width="stretch", key="train_history_table")

    def use() -> None:
        session.use_trained_model(res.get("model_id"))  # into the sidebar, and loaded

    st.button("Use this model on every page", key="train_use", on_click=use)
elif job is not None and not job.active:
    session.show_outcome(job, "The training")
