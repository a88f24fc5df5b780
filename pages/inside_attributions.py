"""Deconvnet and attributions: which input pixels drive a class score, by seven methods side by side."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import streamlit as st
import torch
from torch import nn

from diagnostics import attributions as AT
from nnlab.data.viz import as_image, display_scale
from nnlab.i18n import N_, _, num
from nnlab.ui import columns, session
from nnlab.ui.widgets import pick_input, show_input

STYLES = {"heat": N_("heat"), "signed": N_("signed")}

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Deconvnet and attributions"))
cur = session.current()
data = cur.data


@st.cache_resource(max_entries=2, show_spinner=False)
def _prepared(model_id: str, _model: nn.Module, _example: torch.Tensor) -> tuple[AT.Prepared, threading.Lock]:
    """One prepared copy per model; the lock keeps two sessions from hooking it at the same time."""
    return AT.prepare(_model, _example), threading.Lock()


@st.cache_data(max_entries=256, show_spinner=False)
def _attr(model_id: str, data_id: str, token: str, method: str, target: int, steps: int, layer: str, window: int,
          _x: torch.Tensor, _model: nn.Module) -> AT.Attribution:
    prep, lock = _prepared(model_id, _model, _x)
    with lock:
        return AT.attribute(prep, _x, method, target, ig_steps=steps, layer=layer, window=window)


@st.cache_data(max_entries=64, show_spinner=False)
def _probs(model_id: str, data_id: str, token: str, _model: nn.Module, _x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(_model(_x).float(), 1)[0].numpy()


left, right = st.columns([1, 3])
with left:
    choice = pick_input(cur, "attr")
if choice is None:
    st.stop()
with st.spinner(_("Preparing a private copy of the model…")):
    prep, _lock = _prepared(cur.model_id, cur.model, choice.x)
probs = _probs(cur.model_id, data.id, choice.token, cur.model, choice.x)
pred = int(probs.argmax())
with left:
    show_input(choice, cur)
    st.metric(_("Predicted"), data.classes[pred], _("{p} confidence").format(p=num(float(probs[pred]), ".1%")),
              delta_color="off", delta_arrow="off")

with right:
    classes = list(range(data.num_classes))
    tkey = f"attr_target_{choice.token}"  # a new input starts at its predicted class
    target = st.selectbox(_("Target class (default: predicted)"), classes, index=pred, key=tkey,
                          format_func=lambda c: f"{data.classes[c]} — p = {num(float(probs[c]), '.1%')}"
                          + (_(" (predicted)") if c == pred else ""))
    methods = st.multiselect(_("Methods"), list(AT.METHODS), default=list(AT.METHODS), key="attr_methods",
                             format_func=lambda m: _(AT.METHODS[m]))
    c1, c2, c3, c4 = st.columns(4)
    steps = int(c1.slider(_("IG steps"), 4, 200, 32, key="attr_ig_steps",
                          help=_("integration steps from the mean image")))
    layers = AT.gradcam_layers(prep.model)
    if not layers:
        st.warning(_("No Conv2d layer: Grad-CAM and guided Grad-CAM are left out."))
        methods = [m for m in methods if m not in AT.NEEDS_LAYER]
        layer = ""
    else:
        if st.session_state.get("attr_layer") not in layers:
            st.session_state["attr_layer"] = layers[0]
        layer = c2.selectbox(_("Grad-CAM layer"), layers, key="attr_layer",
                             help=_("the recommended layer first: the last conv layer, or for a vision transformer "
                                    "the last block (tokens laid out as the patch grid)"))
    h = data.input_shape[1]
    window = int(c3.slider(_("Occlusion window (px)"), 1, max(2, h // 2), max(1, h // 8), key="attr_window",
                           help=_("square patch set to the mean image; stride half the window")))
    style = c4.radio(_("Input-space maps"), list(STYLES), key="attr_style", format_func=lambda k: _(STYLES[k]),
                     help=_("heat: |attribution| over the input; signed: red/blue (or RGB around grey) as in "
                            "Zeiler & Fergus"))
    for note in prep.notes():
        st.info(_(note))

if not methods:
    st.info(_("Choose at least one method."))
    st.stop()

results: list[AT.Attribution] = []
bar = st.progress(0.0, text=_("Computing attributions…"))
try:
    for i, meth in enumerate(methods):
        bar.progress(i / len(methods), text=f"{_(AT.METHODS[meth])}…")
        results.append(_attr(cur.model_id, data.id, choice.token, meth, int(target), steps, layer, window,
                             choice.x, cur.model))
except Exception as exc:
    bar.empty()
    st.error(_("The attribution failed: {error}").format(error=f"{type(exc).__name__}: {exc}"))
    st.stop()
bar.empty()

scale = display_scale(h, 128)
base = as_image(choice.x8[0])
ncols = 4
cols = st.columns(ncols)
cols[0].image(as_image(choice.x8[0], scale), caption=_("input"), width="stretch", output_format="PNG")
for i, a in enumerate(results, start=1):
    s = "heat" if a.method in ("gradcam", "occlusion", "saliency") else style
    img = AT.render(a.values, base, s, scale=scale)
    cols[i % ncols].image(img, caption=f"{_(AT.METHODS[a.method])} → {data.classes[a.target]}", width="stretch",
                          output_format="PNG")
    if i % ncols == ncols - 1 and i < len(results):
        cols = st.columns(ncols)

summary = pd.DataFrame([AT.summary(a) for a in results])
summary["method"] = summary["method"].map(_)  # the method's name as the page shows it
st.dataframe(summary, hide_index=True, width="stretch", column_config=columns.labels(summary.columns))
st.caption(_("Baselines: integrated gradients and occlusion use the zero input, i.e. the dataset's mean image. "
             "IG delta: |sum of attributions − (f(x) − f(baseline))|, small when the steps suffice."))
