"""Train or fine-tune: any architecture on the selected dataset, as a background job; the result is a model in
the workspace, selectable in the sidebar like the demo."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from nnlab import i18n
from nnlab.i18n import _, num
from nnlab.jobs import manager as jobs
from nnlab.jobs.kinds import INITS, trained_model_id
from nnlab.models.registry import arch_label
from nnlab.train import OPTIMIZERS, SCHEDULES, TrainConfig
from nnlab.ui import session, widgets

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Train or fine-tune"))
cur = session.current()
data = cur.data
arch = cur.arch
st.caption(_("Trains **{arch}** (the architecture chosen in the sidebar) on **{data}** ({n_train} training images, "
             "{n_classes} classes, input {shape}) in the background: you may leave the page. The result is stored "
             "in the workspace and appears in the sidebar under *Weights*.").format(
    arch=arch_label(arch), data=data.name, n_train=num(len(data.y_train), ","), n_classes=data.num_classes,
    shape="×".join(map(str, data.input_shape))))

INIT_LABELS = {"scratch": _("From scratch (seeded random weights)"), "pretrained": _("From pretrained weights (hub)"),
               "model": _("From the current model ({name})").format(name=cur.record.name)}
c1, c2, c3 = st.columns(3)
init_kind = c1.radio(_("Start from"), list(INITS), key="train_init", format_func=INIT_LABELS.get, index=2)
epochs = int(c2.number_input(_("Epochs"), 1, 500, 3, key="train_epochs"))
lr = float(c3.number_input(_("Learning rate"), 1e-6, 5.0, 1e-3, key="train_lr", format="%.1e", step=5e-4))
d1, d2, d3, d4 = st.columns(4)
optimizer = d1.selectbox(_("Optimiser"), OPTIMIZERS, key="train_opt")
schedule = d2.selectbox(_("Learning-rate schedule"), SCHEDULES, key="train_schedule",
                        help=_("onecycle: warm-up, then annealing; cosine: annealing from the rate; constant"))
batch = int(d3.number_input(_("Batch size"), 1, 4096, 64, key="train_batch"))
wd = float(d4.number_input(_("Weight decay"), 0.0, 1.0, 1e-4, key="train_wd", format="%.1e", step=1e-4))
a1, a2, a3 = st.columns(3)
flip = a1.checkbox(_("Random horizontal flips"), key="train_flip", value=True)
crop = float(a2.number_input(_("Random crop padding (share of the side)"), 0.0, 0.5, 0.125, step=0.025,
                             key="train_crop", help=_("0 turns random crops off")))
smoothing = float(a3.number_input(_("Label smoothing"), 0.0, 0.9, 0.0, step=0.05, key="train_smooth"))
name = st.text_input(_("Name (optional)"), key="train_name", max_chars=120)

try:
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch, weight_decay=wd, optimizer=optimizer,
                      schedule=schedule, flip=flip, crop=crop, label_smoothing=smoothing)
except ValueError as exc:
    st.error(_("The settings are not valid: {reason}").format(reason=exc))
    st.stop()
init = {"kind": init_kind} if init_kind != "model" else {"kind": "model", "model_id": cur.model_id}
config = cfg.to_dict()
model_id = trained_model_id(arch, data.id, init, config)
params = {"data": cur.data_ref, "arch": arch, "init": init, "config": config, "model_id": model_id,
          "name": name.strip()}
job = jobs.find("train-model", params)
running = job is not None and job.active
if st.button(_("Train"), key="train_run", type="primary", disabled=running) or running:
    job = session.run_job("train-model", params, retry=not running, what=_("The training"),
                          title=_("Training **{arch}** on {data}…").format(arch=arch, data=data.name))
if job is not None and job.status == jobs.DONE:
    res = job.result or {}
    st.success(_("Done in {seconds} s: test accuracy {accuracy}. Stored as `{model_id}`.").format(
        seconds=num(res.get("seconds", 0), ".0f"), accuracy=num(res.get("accuracy", float("nan")), ".2%"),
        model_id=res.get("model_id")))
    hist = pd.DataFrame(res.get("history", []))
    if not hist.empty:
        series = {"train_acc": _("train accuracy"), "test_acc": _("test accuracy")}
        fig = px.line(hist.rename(columns=series), x="epoch", y=list(series.values()), markers=True,
                      labels={"value": _("accuracy"), "epoch": _("epoch"), "variable": _("series")})
        fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), separators=i18n.plotly_separators())
        widgets.chart(fig, key="train_history")
        st.dataframe(hist, hide_index=True, width="stretch", key="train_history_table",
                     column_config=widgets.history_columns())

    def use() -> None:
        session.use_trained_model(res.get("model_id"))  # into the sidebar, and loaded

    st.button(_("Use this model on every page"), key="train_use", on_click=use)
elif job is not None and not job.active:
    session.show_outcome(job, _("The training"))
