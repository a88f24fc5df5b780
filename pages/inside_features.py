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
from nnlab.ui import session
from nnlab.ui.widgets import pick_input, show_input
from nnlab.workspace import Workspace

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title("Feature maps")
cur = session.current()
data = cur.data
ws = session.workspace()


@st.cache_data(max_entries=8, show_spinner="Listing layers…")
def _layers(model_id: str, shape: tuple[int, int, int], _model: nn.Module) -> list[FM.LayerInfo]:
    return FM.layer_shapes(_model, shape)


@st.cache_data(max_entries=64, show_spinner="Computing feature maps…")
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
                        title=f"Scanning {limit:,} {split} samples through **{layer}**…", what="The channel scores")
    scores = (_stored_scores(str(ws.root), key, path.stat().st_mtime) if path.is_file()
              else dtasks.load_channel_scores(ws, key))
    if scores is None:
        st.error("The channel scores finished but cannot be read.")
        st.stop()
    return scores


left, right = st.columns([1, 3])
with left:
    choice = pick_input(cur, "features")
    if choice is not None:
        show_input(choice, cur)
        probs = _predict(cur.model_id, data.id, choice.token, cur.model, choice.x)
        pred = int(probs.argmax())
        st.metric("Predicted", data.classes[pred], f"{probs[pred]:.1%} confidence", delta_color="off",
                  delta_arrow="off")
if choice is None:
    st.stop()

layers = [li for li in _layers(cur.model_id, data.input_shape, cur.model) if len(li.shape) in (1, 3)]
if not layers:
    st.error("No layer of this model returns a tensor for this input.")
    st.stop()
names = [li.name for li in layers]
info = {li.name: li for li in layers}
if st.session_state.get("features_layer") not in names:
    convs = [li.name for li in layers if len(li.shape) == 3 and li.type == "Conv2d"]
    st.session_state["features_layer"] = convs[0] if convs else names[0]
with right:
    c1, c2, c3 = st.columns([3, 1, 1])
    layer = c1.selectbox("Layer", names, key="features_layer", format_func=lambda n: info[n].label)
    scale = c2.radio("Scale", ["per-channel", "shared"], key="features_scale",
                     help="per-channel: each map stretched to its own range (grey); shared: one symmetric scale, "
                          "red positive, blue negative")
    order_by = c3.radio("Order", ["channel index", "strongest first"], key="features_order")
    if info[layer].layout == "tokens":
        st.caption("A vision transformer layer: each map is one embedding channel over the patch tokens, laid out "
                   "as the patch grid (the class token is left out).")
    elif info[layer].layout == "hwc":
        st.caption("This layer works channels-last (N×H×W×C); its channels are shown as maps like any other.")
    maps = _maps(cur.model_id, data.id, choice.token, layer, cur.model, choice.x)
    n_ch = maps.shape[0]
    max_ch = int(st.slider("Channels shown", 1, n_ch, min(64, n_ch), key="features_max")) if n_ch > 1 else 1
    flat = maps.reshape(n_ch, -1)
    mean_act = flat.mean(1).numpy()
    max_act = flat.amax(1).numpy()
    order = np.argsort(-max_act, kind="stable") if order_by == "strongest first" else np.arange(n_ch)
    st.image(FM.feature_grid(maps, scale, max_ch, order=order),
             caption=f"{layer}: {min(max_ch, n_ch)} of {n_ch} channels ({'×'.join(map(str, maps.shape))}); "
                     f"order {', '.join(map(str, order[:12]))}{'…' if n_ch > 12 else ''}", output_format="PNG")
    m1, m2, m3 = st.columns(3)
    m1.metric("Never-positive channels", f"{int((max_act <= 0).sum())} / {n_ch}")
    m2.metric("Mean activation", f"{float(maps.mean()):.4g}")
    m3.metric("Largest activation", f"{float(maps.max()):.4g}", help=f"channel {int(max_act.argmax())}")

st.subheader("Samples that activate a channel most")
d1, d2, d3, d4 = st.columns(4)
channel = int(d1.number_input(f"Channel (0–{n_ch - 1})", 0, n_ch - 1, int(order[0]), key="features_channel"))
split = d2.selectbox("Search in", ["test", "train"], key="features_top_split")
n_split = len(data.labels(split))
limits = sorted({min(n_split, v) for v in (200, 1000, 2000, 5000, 10000)})
if st.session_state.get("features_top_limit") not in limits:
    st.session_state["features_top_limit"] = min(n_split, 1000)
limit = (int(d3.select_slider("Samples scanned", limits, key="features_top_limit")) if len(limits) > 1
         else limits[0])
reduce = d4.radio("Score", FM.REDUCTIONS, key="features_top_reduce", help="max or mean of the channel's map")
scores = _scores(layer, split, limit, reduce)
idx, vals = FM.top_activating(scores, channel, k=12)
scale_px = display_scale(data.input_shape[1], 72)
st.image(grid([as_image(data.images(split)[int(i)], scale_px) for i in idx], ncols=12),
         caption=f"Top {len(idx)} of {limit} {split} samples for channel {channel} of {layer} ({reduce} activation)",
         output_format="PNG")
st.dataframe(pd.DataFrame({"index": idx, "label": [data.classes[int(data.labels(split)[int(i)])] for i in idx],
                           "score": vals}), hide_index=True, width="stretch", height=160)
