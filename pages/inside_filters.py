"""Filters and weights: a conv layer's filters as a grid (sortable by L1/L2 norm), weight histograms, a table."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from torch import nn

from diagnostics import filters as F
from nnlab.models.archinfo import arch_info
from nnlab.ui import session, widgets

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title("Filters and weights")
cur = session.current()


@st.cache_data(max_entries=8, show_spinner=False)
def _conv_layers(model_id: str, _model: nn.Module) -> list[F.ConvInfo]:
    return F.conv_layers(_model)


@st.cache_data(max_entries=64, show_spinner="Drawing filters…")
def _grid(model_id: str, layer: str, view: str, channel: int, scale: str, norm: str, sort: str, max_filters: int,
          _model: nn.Module) -> F.FilterGrid:
    return F.filter_grid(F.conv_weight(_model, layer), view, channel, scale, norm, sort, max_filters)


@st.cache_data(max_entries=8, show_spinner="Summarising weights…")
def _table(model_id: str, near_zero: float, _model: nn.Module) -> list[dict]:
    return F.weight_table(_model, near_zero)


@st.cache_data(max_entries=256, show_spinner=False)
def _hist(model_id: str, layer: str, bins: int, _model: nn.Module):
    return F.weight_histogram(_model, layer, bins)


layers = _conv_layers(cur.model_id, cur.model)
if len(layers) == 1 and arch_info(cur.model).kind == "vit":
    st.info(f"A vision transformer: its only convolution is the patch embedding ({layers[0].name}), one filter per "
            "embedding channel over a whole patch. Attention and MLP weights are in the table below.")
if not layers:
    st.warning("This model has no Conv2d layer; only the weight table below applies.")
else:
    names = [c.name for c in layers]
    info = {c.name: c for c in layers}
    if st.session_state.get("filters_layer") not in names:
        st.session_state["filters_layer"] = names[0]
    layer = st.selectbox("Convolution layer", names, key="filters_layer", format_func=lambda n: info[n].label)
    ci = info[layer]
    in_per_group = ci.in_channels // ci.groups
    views = (["rgb"] if in_per_group == 3 else []) + ["channel", "mean"]
    labels = {"rgb": "RGB in colour", "channel": "one input channel", "mean": "mean over input channels"}
    if st.session_state.get("filters_view") not in views:
        st.session_state["filters_view"] = views[0]
    c1, c2, c3, c4 = st.columns(4)
    view = c1.radio("Show", views, key="filters_view", format_func=labels.get)
    channel = 0
    if view == "channel" and in_per_group > 1:
        channel = int(c1.number_input(f"Input channel (0–{in_per_group - 1})", 0, in_per_group - 1, 0,
                                      key="filters_channel"))
    scale = c2.radio("Colour scale", F.SCALES, key="filters_scale",
                     help="shared: one scale for all filters, so magnitudes compare; per-filter: each its own max |w|")
    norm = c3.radio("Norm", F.NORMS, key="filters_norm", format_func=str.upper,
                    help="L1/L2 norm of each filter: the usual criterion of filter pruning")
    sort = c3.selectbox("Order", ["none", "ascending", "descending"], key="filters_sort",
                        format_func=lambda s: {"none": "layer order", "ascending": "weakest first",
                                               "descending": "strongest first"}[s])
    max_f = (int(c4.slider("Filters shown", 1, ci.out_channels, min(64, ci.out_channels), key="filters_max"))
             if ci.out_channels > 1 else 1)
    g = _grid(cur.model_id, layer, view, channel, scale, norm, sort, max_f, cur.model)
    st.image(g.image, caption=f"{layer}: {len(g.order)} of {ci.out_channels} filters, {g.note}. "
                              f"Order: {', '.join(map(str, g.order[:16]))}{'…' if len(g.order) > 16 else ''}",
             output_format="PNG")
    norms = g.norms
    m1, m2, m3, m4 = st.columns(4)
    m1.metric(f"Mean {norm.upper()} norm", f"{norms.mean():.4g}")
    m2.metric("Smallest", f"{norms.min():.4g}", help=f"filter {int(norms.argmin())}")
    m3.metric("Largest", f"{norms.max():.4g}", help=f"filter {int(norms.argmax())}")
    m4.metric("Smallest / largest", f"{norms.min() / norms.max():.3f}" if norms.max() > 0 else "—")
    fig = go.Figure(go.Bar(x=[str(i) for i in g.order], y=norms[g.order], marker_line_width=0))
    fig.update_layout(height=240, margin=dict(l=10, r=10, t=30, b=10), title=f"{norm.upper()} norm per filter",
                      xaxis_title="filter (display order)", xaxis_type="category")
    widgets.chart(fig, key="filters_norms")

st.subheader("Weights per layer")
near = st.select_slider("Near zero means |w| ≤ this fraction of the layer's max |w|", [0.001, 0.01, 0.05, 0.1],
                        value=0.01, key="filters_near")
rows = _table(cur.model_id, near, cur.model)
df = pd.DataFrame(rows)
st.dataframe(df, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(df)),
             column_config={"near zero": st.column_config.NumberColumn(format="percent"),
                            "exact zeros": st.column_config.NumberColumn(format="percent")})
if rows:
    all_layers = [r["layer"] for r in rows]
    default = all_layers[:8]
    chosen = st.multiselect("Histograms of", all_layers, default=default, key="filters_hist_layers")
    bins = int(st.slider("Bins", 10, 200, 60, key="filters_bins"))
    hists = {n: _hist(cur.model_id, n, bins, cur.model) for n in chosen}
    if hists:
        widgets.chart(F.histogram_figure(hists, title="Weight histograms"), key="filters_hist")
