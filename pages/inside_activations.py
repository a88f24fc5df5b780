"""Activations: each layer's output distribution over a batch (dead units, saturation, mean, std, histograms),
optionally beside a compressed variant of the same model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from diagnostics import activations as A
from diagnostics import tasks as dtasks  # registers the activation-stats job kind
from diagnostics.filters import histogram_figure
from nnlab import i18n
from nnlab.i18n import N_, _, num
from nnlab.jobs import manager as jobs
from nnlab.records import Record
from nnlab.ui import columns, session, widgets
from nnlab.workspace import Workspace

SPLITS = {"test": N_("test"), "train": N_("train")}
KINDS = {"activations": N_("activations"), "conv/linear": N_("conv/linear"), "all leaves": N_("all leaves")}

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Activations"))
cur = session.current()
data = cur.data
ws = session.workspace()


@st.cache_data(max_entries=16, show_spinner=False)
def _stored_stats(root: str, key: str, stamp: float) -> list[A.LayerActivation] | None:
    return dtasks.load_activation_stats(Workspace(root), key)


def _read_stats(key: str) -> list[A.LayerActivation] | None:
    path = ws.run_path(key)
    return _stored_stats(str(ws.root), key, path.stat().st_mtime) if path.is_file() else \
        dtasks.load_activation_stats(ws, key)


def _stats(split: str, n: int, kind: str, bins: int, variant: Record | None = None) -> list[A.LayerActivation]:
    """The statistics of the base model (or a variant) over the first ``n`` images: one job the first time, stored.

    For a variant that cannot be analysed (the job failed) the page says so and goes on with the base alone.
    """
    vid = variant.id if variant is not None else ""
    key = dtasks.activation_stats_key(cur.model_id, data.id, split, n, kind, bins, vid)
    stats = _read_stats(key)
    if stats is not None:
        return stats
    params = {"model_id": cur.model_id, "data": cur.data_ref, "split": split, "n": n, "kind": kind, "bins": bins}
    title = (_("Running {n} {split} images through the variant…") if vid else
             _("Running {n} {split} images through the model…")).format(n=num(n, ",d"), split=_(SPLITS[split]))
    if not vid:
        session.run_job("activation-stats", params, title=title, what=_("The activation statistics"))
    else:
        params["variant_id"] = vid
        old = jobs.find("activation-stats", params)  # one that ended badly is not re-run by opening the page
        stuck = old is not None and old.status in (jobs.FAILED, jobs.INTERRUPTED, jobs.CANCELLED)
        job = session.follow(old if stuck else jobs.submit("activation-stats", params, owner=session.owner()), title)
        if job.status == jobs.FAILED:  # a variant that cannot run as an nn.Module here
            st.warning(_("The variant cannot be analysed: {error}").format(error=job.error))
            return []
        if not session.show_outcome(job, _("The variant's activation statistics")):
            return []
    stats = _read_stats(key)
    if stats is None:
        st.error(_("The activation statistics finished but cannot be read."))
        st.stop()
    return stats


def _variants() -> list[Record]:
    """Saved variants of the current model and dataset, when the compression module is there."""
    try:
        from compression.variant import load_variant_model  # noqa: F401
    except Exception:
        return []
    try:
        recs = session.workspace().list_variants()
    except Exception:
        return []
    return [r for r in recs if r.dataset == data.id and (not r.parent or r.parent == cur.model_id)
            and not str(r.status).startswith("failed")]


c1, c2, c3, c4 = st.columns(4)
split = c1.selectbox(_("Split"), list(SPLITS), key="acts_split", format_func=lambda k: _(SPLITS[k]))
n_max = len(data.labels(split))
big = cur.record.params > 5_000_000
choices = sorted({min(n_max, v) for v in (4, 16, 64, 256, 1024)})
default = min(n_max, 16 if big else 256)
if st.session_state.get("acts_n") not in choices:
    st.session_state["acts_n"] = default if default in choices else choices[0]
if len(choices) > 1:
    n = int(c2.select_slider(_("Batch size"), choices, key="acts_n",
                             help=_("the first N samples of the split; statistics are over all of them")))
else:
    n = choices[0]
    c2.caption(_("Batch: all {n} samples of the split").format(n=n))
kind = c3.selectbox(_("Layers"), A.KINDS, key="acts_kind", format_func=lambda k: _(KINDS.get(k, k)),
                    help=_("activation modules (ReLU, ReLU6, sigmoid…), conv/linear outputs, or every leaf module"))
bins = int(c4.slider(_("Bins"), 10, 150, 50, key="acts_bins"))

stats = _stats(split, n, kind, bins)
if not stats and kind == "activations":
    st.info(_("No activation modules found (the model may apply its activations functionally); "
              "showing conv/linear outputs instead."))
    kind = "conv/linear"
    stats = _stats(split, n, kind, bins)
if not stats:
    st.warning(_("No layer of this kind produced an output."))
    st.stop()

variants = _variants()
other: list[A.LayerActivation] = []
vrec = None
if variants:
    by_id = {r.id: r for r in variants}
    vid = st.selectbox(_("Compare with a compressed variant"), ["", *by_id], key="acts_variant",
                       format_func=lambda v: f"{by_id[v].name} ({by_id[v].method})" if v else _("(none)"))
    if vid:
        vrec = by_id[vid]
        other = _stats(split, n, kind, bins, vrec)

rows = [s.row() for s in stats]
df = pd.DataFrame(rows)
worst = max(stats, key=lambda s: s.dead_fraction)
m1, m2, m3 = st.columns(3)
m1.metric(_("Layers"), len(stats))
m2.metric(_("Most dead units"), num(worst.dead_fraction, ".1%"),
          help=_("layer {layer}: never positive over {n} samples").format(layer=worst.name, n=n))
m3.metric(_("Mean dead units"), num(float(np.mean([s.dead_fraction for s in stats])), ".1%"))
pct = st.column_config.NumberColumn(format="percent")
st.dataframe(df, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(df)),
             column_config=columns.labels(df.columns, {"dead units": pct, "dead channels": pct, "saturated": pct,
                                                       "zeros": pct}))
st.caption(_("Dead unit: an output position (channel, row, column; for a vision transformer channel and token) "
             "that is never positive for any sample of the batch. Saturated: within 0.1 % of a bounded activation's "
             "flat limit (sigmoid/tanh ends, ReLU6 top); empty for unbounded layers."))

if other:
    st.subheader(_("Base vs {name}").format(name=vrec.name if vrec else _("variant")))
    cmp = pd.DataFrame(A.compare(stats, other))
    st.dataframe(cmp, hide_index=True, width="stretch", column_config=columns.labels(cmp.columns))
    names = [s.name for s in stats if any(o.name == s.name for o in other)]
    if names:
        pick = st.selectbox(_("Overlay the histograms of"), names, key="acts_cmp_layer")
        a = next(s for s in stats if s.name == pick)
        b = next(s for s in other if s.name == pick)
        fig = go.Figure()
        for s, label in ((a, _("base")), (b, _("variant"))):
            centers = (s.edges[:-1] + s.edges[1:]) / 2
            fig.add_trace(go.Scatter(x=centers, y=s.counts / max(1, s.counts.sum()), mode="lines", name=label,
                                     line_shape="hvh"))
        fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), yaxis_title=_("fraction of values"),
                          title=_("{layer}: output distribution").format(layer=pick),
                          separators=i18n.plotly_separators())
        widgets.chart(fig, key="acts_cmp_fig")

st.subheader(_("Output histograms"))
log_y = st.checkbox(_("Logarithmic counts"), value=True, key="acts_log")
shown = stats[:24]
fig = histogram_figure({f"{s.name} ({s.type})": (s.counts, s.edges) for s in shown}, title="")
fig.update_layout(separators=i18n.plotly_separators())
if log_y:
    fig.update_yaxes(type="log")
widgets.chart(fig, key="acts_hist")
if len(stats) > len(shown):
    st.caption(_("First {shown} of {total} layers shown; the table lists all.").format(shown=len(shown),
                                                                                        total=len(stats)))
