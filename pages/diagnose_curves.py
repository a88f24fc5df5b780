"""Learning curves: the base model's per-epoch history, and E_train/E_test against training-set size from
retraining on 10/25/50/100 % of the training set (cached in the workspace)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from diagnostics import curves
from diagnostics import tasks as dtasks  # noqa: F401 - registers the diagnostics' job kinds
from nnlab import i18n
from nnlab.base import demo_config
from nnlab.i18n import _, num
from nnlab.jobs import manager as jobs
from nnlab.ui import session, widgets

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Learning curves"))
cur = session.current()
data = cur.data

st.subheader(_("Training history of this model"))
if cur.history:
    h = pd.DataFrame(cur.history)
    l1, l2 = st.columns(2)
    axes = {"epoch": _("epoch"), "variable": _("series")}
    loss = {"train_loss": _("train loss"), "test_loss": _("test loss")}
    fig = px.line(h.rename(columns=loss), x="epoch", y=list(loss.values()), markers=True,
                  labels={"value": _("loss"), **axes})
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), separators=i18n.plotly_separators())
    widgets.chart(fig, key="curves_hist_loss", where=l1)
    err = {"train_error": _("train error"), "test_error": _("test error")}
    fig = px.line(h.assign(train_error=1 - h["train_acc"], test_error=1 - h["test_acc"]).rename(columns=err),
                  x="epoch", y=list(err.values()), markers=True, labels={"value": _("error"), **axes})
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), separators=i18n.plotly_separators())
    widgets.chart(fig, key="curves_hist_err", where=l2)
    last = cur.history[-1]
    st.caption(_("Last epoch: train loss {train_loss}, test loss {test_loss}, E_train {e_train}, E_test {e_test} "
                 "(train metrics in eval mode over up to 10 000 of the training samples).").format(
        train_loss=num(last["train_loss"], ".3f"), test_loss=num(last["test_loss"], ".3f"),
        e_train=num(1 - last["train_acc"], ".2%"), e_test=num(1 - last["test_acc"], ".2%")))
else:
    st.info(_("No per-epoch history for this model (it was not trained by nnlab)."))

st.subheader(_("Error against training-set size"))
st.caption(_("The lecture's *train on a subset of smaller size*: the architecture is retrained from scratch on "
             "nested, stratified subsets. If E_test still falls at the largest size, more data should help; if the "
             "curve is flat, it will not."))
base = demo_config(data)
f1, f2 = st.columns([3, 1])
fractions = f1.multiselect(_("Fractions of the training set"), [0.1, 0.25, 0.5, 1.0], default=[0.1, 0.25, 0.5, 1.0],
                           format_func=lambda f: num(f, ".0%"), key="curves_fractions")
epochs = int(f2.number_input(_("Epochs per subset"), min_value=1, max_value=100, value=base.epochs, step=1,
                             key="curves_epochs"))
fractions = sorted(fractions)
ws = session.workspace()
points = None
if not fractions:
    st.info(_("Choose at least one fraction."))
else:
    key = curves.cache_key(cur.model_id, data.id, fractions, epochs)
    points = curves.load_curve(ws, key)
    passes = sum(fractions) * epochs
    curve_params = {"model_id": cur.model_id, "data": cur.data_ref, "fractions": fractions, "epochs": epochs}
    cjob = jobs.find("learning-curve", curve_params)
    if points is None:
        st.write(_("Not computed yet: {trainings} trainings, {passes} passes over the {n} training images in all "
                   "({device}); it runs as a background job, so you may leave the page.").format(
            trainings=len(fractions), passes=num(passes, ".1f"), n=num(len(data.y_train), ","),
            device=session.device_note()))
        if cjob is not None and cjob.active or st.button(_("Train on the subsets"), key="curves_run", type="primary"):
            session.run_job("learning-curve", curve_params, title=_("Retraining on the subsets…"),
                            what=_("The learning curve"), retry=not (cjob is not None and cjob.active))
            points = curves.load_curve(ws, key)
        elif cjob is not None:
            session.show_outcome(cjob, _("The learning curve"))
    if points is None:
        cached = curves.cached_curves(ws, cur.model_id, data.id)
        if cached:
            st.caption(_("Showing the most recent cached curve `{run}`.").format(run=cached[0][0]))
            points = cached[0][1]

if points:
    df = pd.DataFrame([{"fraction": p.fraction, "training samples": p.n_train, "E_train": p.train_error,
                        "E_test": p.test_error, "seconds": round(p.seconds, 1)} for p in points])
    fig = px.line(df, x="training samples", y=["E_train", "E_test"], markers=True, log_x=True,
                  labels={"value": _("error"), "training samples": _("training samples"), "variable": _("series")})
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=10, b=10), separators=i18n.plotly_separators())
    widgets.chart(fig, key="curves_size")
    # the columns keep their ids; column_config shows them in the current language
    st.dataframe(df, hide_index=True, width="stretch", key="curves_table",
                 column_config={"fraction": _("fraction"), "training samples": _("training samples"),
                                "seconds": _("seconds"),
                                "E_train": st.column_config.NumberColumn(format="%.4f"),
                                "E_test": st.column_config.NumberColumn(format="%.4f")})
    slope = curves.error_slope(points)
    if slope is not None:
        st.metric(_("E_test change per doubling of the training set (last two points)"), num(slope, "+.2%"))
