"""Feature maps: every channel of a layer for one input, and the dataset samples that excite a channel most."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
import torch
from torch import nn

from diagnostics import features as FM
from diagnostics import tasks as dtasks  # registers the channel-scores job kind
from nnlab.data.viz import as_image, display_scale, grid
from nnlab.i18n import N_, _, num
from nnlab.ui import columns, session
from nnlab.ui.widgets import pick_input, show_input
from nnlab.workspace import Workspace

SPLITS = {"test": N_("test"), "train": N_("train")}
SCALES = {"per-channel": N_("per-channel"), "shared": N_("shared")}
ORDERS = {"channel index": N_("channel index"), "strongest first": N_("strongest first")}
SCORES = {"max": N_("max"), "mean": N_("mean")}
TOP_COLUMNS = (N_("index"), N_("label"), N_("score"))

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Feature maps"))
cur = session.current()
data = cur.data
ws = session.workspace()


@st.cache_data(max_entries=8, show_spinner=False)
def _layers(model_id: str, shape: tuple[int, int, int], _model: nn.Module) -> list[FM.LayerInfo]:
    return FM.layer_shapes(_model, shape)


@st.cache_data(max_entries=64, show_spinner=False)
def _maps(model_id: str, data_id: str, token: str, layer: str, _model: nn.Module, _x: torch.Tensor) -> torch.Tensor:
    return FM.feature_maps(_model, _x, layer)


@st.cache_data(max_entries=32, show_spinner=False)
def _predict(model_id: str, data_id: str, token: str, _model: nn.Module, _x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(_model(_x).float(), 1)[0].numpy()


@st.cache_data(max_entries=16, show_spinner=False)
def _stored_scores(root: str, key: str, stamp: float) -> np.ndarray | None:
    return dtasks.load_channel_scores(Workspace(root), key)


def _scores(layer: str, split: str, limit: int, reduce: str) -> np.ndarray:
    """Channel scores of the first ``limit`` samples: one job the first time, stored and shared by sessions."""
    key = dtasks.channel_scores_key(cur.model_id, data.id, layer, split, limit, reduce)
    path = ws.result_path(key)
    if not path.is_file() and dtasks.load_channel_scores(ws, key) is None:
        session.run_job("channel-scores", {"model_id": cur.model_id, "data": cur.data_ref, "layer": layer,
                                           "split": split, "limit": limit, "reduce": reduce},
                        title=_("Scanning {n} {split} samples through **{layer}**…").format(
                            n=num(limit, ",d"), split=_(SPLITS[split]), layer=layer),
                        what=_("The channel scores"))
    scores = (_stored_scores(str(ws.root), key, path.stat().st_mtime) if path.is_file()
              else dtasks.load_channel_scores(ws, key))
    if scores is None:
        st.error(_("The channel scores finished but cannot be read."))
        st.stop()
    return scores


left, right = st.columns([1, 3])
with left:
    choice = pick_input(cur, "features")
    if choice is not None:
        show_input(choice, cur)
        probs = _predict(cur.model_id, data.id, choice.token, cur.model, choice.x)
        pred = int(probs.argmax())
        st.metric(_("Predicted"), data.classes[pred], _("{p} confidence").format(p=num(float(probs[pred]), ".1%")),
                  delta_color="off", delta_arrow="off")
if choice is None:
    st.stop()

with st.spinner(_("Listing layers…")):
    layers = [li for li in _layers(cur.model_id, data.input_shape, cur.model) if len(li.shape) in (1, 3)]
if not layers:
    st.error(_("No layer of this model returns a tensor for this input."))
    st.stop()
names = [li.name for li in layers]
info = {li.name: li for li in layers}
if st.session_state.get("features_layer") not in names:
    convs = [li.name for li in layers if len(li.shape) == 3 and li.type == "Conv2d"]
    st.session_state["features_layer"] = convs[0] if convs else names[0]
with right:
    c1, c2, c3 = st.columns([3, 1, 1])
    layer = c1.selectbox(_("Layer"), names, key="features_layer", format_func=lambda n: info[n].label)
    scale = c2.radio(_("Scale"), list(SCALES), key="features_scale", format_func=lambda k: _(SCALES[k]),
                     help=_("per-channel: each map stretched to its own range (grey); shared: one symmetric scale, "
                            "red positive, blue negative"))
    order_by = c3.radio(_("Order"), list(ORDERS), key="features_order", format_func=lambda k: _(ORDERS[k]))
    if info[layer].layout == "tokens":
        st.caption(_("A vision transformer layer: each map is one embedding channel over the patch tokens, laid "
                     "out as the patch grid (the class token is left out)."))
    elif info[layer].layout == "hwc":
        st.caption(_("This layer works channels-last (N×H×W×C); its channels are shown as maps like any other."))
    with st.spinner(_("Computing feature maps…")):
        maps = _maps(cur.model_id, data.id, choice.token, layer, cur.model, choice.x)
    n_ch = maps.shape[0]
    max_ch = int(st.slider(_("Channels shown"), 1, n_ch, min(64, n_ch), key="features_max")) if n_ch > 1 else 1
    flat = maps.reshape(n_ch, -1)
    mean_act = flat.mean(1).numpy()
    max_act = flat.amax(1).numpy()
    order = np.argsort(-max_act, kind="stable") if order_by == "strongest first" else np.arange(n_ch)
    st.image(FM.feature_grid(maps, scale, max_ch, order=order),
             caption=_("{layer}: {shown} of {total} channels ({shape}); order {order}").format(
                 layer=layer, shown=min(max_ch, n_ch), total=n_ch, shape="×".join(map(str, maps.shape)),
                 order=", ".join(map(str, order[:12])) + ("…" if n_ch > 12 else "")), output_format="PNG")
    m1, m2, m3 = st.columns(3)
    m1.metric(_("Never-positive channels"), f"{int((max_act <= 0).sum())} / {n_ch}")
    m2.metric(_("Mean activation"), num(float(maps.mean()), ".4g"))
    m3.metric(_("Largest activation"), num(float(maps.max()), ".4g"),
              help=_("channel {channel}").format(channel=int(max_act.argmax())))

st.subheader(_("Samples that activate a channel most"))
d1, d2, d3, d4 = st.columns(4)
channel = int(d1.number_input(_("Channel (0–{last})").format(last=n_ch - 1), 0, n_ch - 1, int(order[0]),
                              key="features_channel"))
split = d2.selectbox(_("Search in"), list(SPLITS), key="features_top_split", format_func=lambda k: _(SPLITS[k]))
n_split = len(data.labels(split))
limits = sorted({min(n_split, v) for v in (200, 1000, 2000, 5000, 10000)})
if st.session_state.get("features_top_limit") not in limits:
    st.session_state["features_top_limit"] = min(n_split, 1000)
limit = (int(d3.select_slider(_("Samples scanned"), limits, key="features_top_limit")) if len(limits) > 1
         else limits[0])
reduce = d4.radio(_("Score"), FM.REDUCTIONS, key="features_top_reduce", format_func=lambda k: _(SCORES.get(k, k)),
                  help=_("max or mean of the channel's map"))
scores = _scores(layer, split, limit, reduce)
idx, vals = FM.top_activating(scores, channel, k=12)
scale_px = display_scale(data.input_shape[1], 72)
st.image(grid([as_image(data.images(split)[int(i)], scale_px) for i in idx], ncols=12),
         caption=_("Top {k} of {n} {split} samples for channel {channel} of {layer} ({score} activation)").format(
             k=len(idx), n=limit, split=_(SPLITS[split]), channel=channel, layer=layer,
             score=_(SCORES.get(reduce, reduce))),
         output_format="PNG")
top = pd.DataFrame(dict(zip(TOP_COLUMNS, (idx, [data.classes[int(data.labels(split)[int(i)])] for i in idx], vals))))
st.dataframe(top, hide_index=True, width="stretch", height=160, column_config=columns.labels(top.columns))
