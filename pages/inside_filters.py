"""Filters and weights: a conv layer's filters as a grid (sortable by L1/L2 norm), weight histograms, a table."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from torch import nn

from diagnostics import filters as F
from nnlab import i18n
from nnlab.i18n import N_, _, num
from nnlab.models.archinfo import arch_info
from nnlab.ui import columns, session, widgets

VIEWS = {"rgb": N_("RGB in colour"), "channel": N_("one input channel"), "mean": N_("mean over input channels")}
SCALES = {"shared": N_("shared"), "per-filter": N_("per-filter")}
ORDERS = {"none": N_("layer order"), "ascending": N_("weakest first"), "descending": N_("strongest first")}

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Filters and weights"))
cur = session.current()


@st.cache_data(max_entries=8, show_spinner=False)
def _conv_layers(model_id: str, _model: nn.Module) -> list[F.ConvInfo]:
    return F.conv_layers(_model)


@st.cache_data(max_entries=64, show_spinner=False)
def _grid(model_id: str, layer: str, view: str, channel: int, scale: str, norm: str, sort: str, max_filters: int,
          _model: nn.Module) -> F.FilterGrid:
    return F.filter_grid(F.conv_weight(_model, layer), view, channel, scale, norm, sort, max_filters)


@st.cache_data(max_entries=8, show_spinner=False)
def _table(model_id: str, near_zero: float, _model: nn.Module) -> list[dict]:
    return F.weight_table(_model, near_zero)


@st.cache_data(max_entries=256, show_spinner=False)
def _hist(model_id: str, layer: str, bins: int, _model: nn.Module):
    return F.weight_histogram(_model, layer, bins)


layers = _conv_layers(cur.model_id, cur.model)
if len(layers) == 1 and arch_info(cur.model).kind == "vit":
    st.info(_("A vision transformer: its only convolution is the patch embedding ({layer}), one filter per "
              "embedding channel over a whole patch. Attention and MLP weights are in the table below.")
            .format(layer=layers[0].name))
if not layers:
    st.warning(_("This model has no Conv2d layer; only the weight table below applies."))
else:
    names = [c.name for c in layers]
    info = {c.name: c for c in layers}
    if st.session_state.get("filters_layer") not in names:
        st.session_state["filters_layer"] = names[0]
    layer = st.selectbox(_("Convolution layer"), names, key="filters_layer", format_func=lambda n: info[n].label)
    ci = info[layer]
    in_per_group = ci.in_channels // ci.groups
    views = (["rgb"] if in_per_group == 3 else []) + ["channel", "mean"]
    if st.session_state.get("filters_view") not in views:
        st.session_state["filters_view"] = views[0]
    c1, c2, c3, c4 = st.columns(4)
    view = c1.radio(_("Show"), views, key="filters_view", format_func=lambda v: _(VIEWS[v]))
    channel = 0
    if view == "channel" and in_per_group > 1:
        channel = int(c1.number_input(_("Input channel (0–{last})").format(last=in_per_group - 1), 0,
                                      in_per_group - 1, 0, key="filters_channel"))
    scale = c2.radio(_("Colour scale"), F.SCALES, key="filters_scale", format_func=lambda k: _(SCALES.get(k, k)),
                     help=_("shared: one scale for all filters, so magnitudes compare; per-filter: each its own "
                            "max |w|"))
    norm = c3.radio(_("Norm"), F.NORMS, key="filters_norm", format_func=str.upper,
                    help=_("L1/L2 norm of each filter: the usual criterion of filter pruning"))
    sort = c3.selectbox(_("Order"), list(ORDERS), key="filters_sort", format_func=lambda s: _(ORDERS[s]))
    max_f = (int(c4.slider(_("Filters shown"), 1, ci.out_channels, min(64, ci.out_channels), key="filters_max"))
             if ci.out_channels > 1 else 1)
    with st.spinner(_("Drawing filters…")):
        g = _grid(cur.model_id, layer, view, channel, scale, norm, sort, max_f, cur.model)
    st.image(g.image, caption=_("{layer}: {shown} of {total} filters, {note}. Order: {order}").format(
                 layer=layer, shown=len(g.order), total=ci.out_channels, note=_(g.note),
                 order=", ".join(map(str, g.order[:16])) + ("…" if len(g.order) > 16 else "")),
             output_format="PNG")
    norms = g.norms
    m1, m2, m3, m4 = st.columns(4)
    m1.metric(_("Mean {norm} norm").format(norm=norm.upper()), num(float(norms.mean()), ".4g"))
    m2.metric(_("Smallest"), num(float(norms.min()), ".4g"), help=_("filter {i}").format(i=int(norms.argmin())))
    m3.metric(_("Largest"), num(float(norms.max()), ".4g"), help=_("filter {i}").format(i=int(norms.argmax())))
    m4.metric(_("Smallest / largest"), num(float(norms.min() / norms.max()), ".3f") if norms.max() > 0 else "—")
    fig = go.Figure(go.Bar(x=[str(i) for i in g.order], y=norms[g.order], marker_line_width=0))
    fig.update_layout(height=240, margin=dict(l=10, r=10, t=30, b=10),
                      title=_("{norm} norm per filter").format(norm=norm.upper()),
                      xaxis_title=_("filter (display order)"), xaxis_type="category",
                      separators=i18n.plotly_separators())
    widgets.chart(fig, key="filters_norms")

st.subheader(_("Weights per layer"))
near = st.select_slider(_("Near zero means |w| ≤ this fraction of the layer's max |w|"), [0.001, 0.01, 0.05, 0.1],
                        value=0.01, key="filters_near", format_func=lambda v: num(v, "g"))
with st.spinner(_("Summarising weights…")):
    rows = _table(cur.model_id, near, cur.model)
df = pd.DataFrame(rows)
st.dataframe(df, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(df)),
             column_config=columns.labels(df.columns, {
                 "near zero": st.column_config.NumberColumn(format="percent"),
                 "exact zeros": st.column_config.NumberColumn(format="percent")}))
if rows:
    all_layers = [r["layer"] for r in rows]
    default = all_layers[:8]
    chosen = st.multiselect(_("Histograms of"), all_layers, default=default, key="filters_hist_layers")
    bins = int(st.slider(_("Bins"), 10, 200, 60, key="filters_bins"))
    hists = {n: _hist(cur.model_id, n, bins, cur.model) for n in chosen}
    if hists:
        fig = F.histogram_figure(hists, title=_("Weight histograms"))
        fig.update_layout(separators=i18n.plotly_separators())
        widgets.chart(fig, key="filters_hist")
