"""Errors by class: per-class precision/recall/F1, the confusion matrix (select a cell to see its samples),
and the most confused pairs."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from diagnostics import errors
from nnlab import i18n
from nnlab.data.viz import as_image, display_scale, grid
from nnlab.i18n import _, ngettext, num
from nnlab.ui import session, widgets

MAX_SHOWN = 60


@st.cache_data(max_entries=16)
def _analysis(model_id: str, dataset_id: str, split: str, _ev, num_classes: int) -> errors.ErrorAnalysis:
    return errors.analyze(_ev.probs, _ev.losses, _ev.labels, num_classes)


session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Errors by class"))
cur = session.current()
data = cur.data
split = st.radio(_("Split"), widgets.SPLITS, horizontal=True, key="classes_split", format_func=widgets.split_label)
ev = session.evaluation(split, cur)
if len(ev.labels) == 0:
    st.info(_("This split is empty."))
    st.stop()
an = _analysis(cur.model_id, data.id, split, ev, data.num_classes)
classes = data.classes

st.caption(_("{n} {split} images, error {error}. Precision, recall and F1 are computed as "
             "scikit-learn does (zero when undefined).").format(n=num(len(ev.labels), ","),
                                                                split=widgets.split_label(split),
                                                                error=num(an.error, ".2%")))
macro = an.metrics.macro()
m1, m2, m3 = st.columns(3)
m1.metric(_("Macro precision"), num(macro["precision"], ".3f"))
m2.metric(_("Macro recall"), num(macro["recall"], ".3f"))
m3.metric(_("Macro F1"), num(macro["f1"], ".3f"))
# the columns keep their ids (class, precision, …); column_config shows them in the current language
st.dataframe(pd.DataFrame(an.metrics.rows(classes)), hide_index=True, width="stretch", key="classes_table",
             column_config={"class": _("class"), "support": _("support"),
                            "precision": st.column_config.NumberColumn(_("precision"), format="%.3f"),
                            "recall": st.column_config.NumberColumn(_("recall"), format="%.3f"),
                            "f1": st.column_config.NumberColumn(_("F1"), format="%.3f")})

st.subheader(_("Confusion matrix"))
SHOW = {"counts": _("counts"), "row-normalised": _("row-normalised")}
norm = st.radio(_("Show"), list(SHOW), horizontal=True, key="classes_norm",
                format_func=SHOW.get) == "row-normalised"
fig = errors.confusion_figure(an.confusion, classes, normalized=norm)
# an invisible marker per cell makes cells selectable (heatmap traces have no point selection)
k = len(classes)
fig.add_trace(go.Scatter(x=[classes[p] for t in range(k) for p in range(k)],
                         y=[classes[t] for t in range(k) for p in range(k)],
                         customdata=[[t, p] for t in range(k) for p in range(k)], mode="markers",
                         marker=dict(symbol="square", size=28, opacity=0.01), hoverinfo="none", showlegend=False))
fig.update_layout(separators=i18n.plotly_separators())
event = widgets.chart(fig, key="classes_cm", on_select="rerun", selection_mode="points")

pairs = an.pairs
default_true, default_pred = (pairs[0].true, pairs[0].pred) if pairs else (0, 0)
points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else (
    event.selection.points if event is not None and hasattr(event, "selection") else [])
sel = repr(points)
if points and st.session_state.get("classes_last_selection") != sel:
    st.session_state["classes_last_selection"] = sel
    pt = points[0]
    cd = pt.get("customdata")
    if cd is not None and len(cd) == 2:
        st.session_state["classes_true"], st.session_state["classes_pred"] = int(cd[0]), int(cd[1])
    elif pt.get("x") in classes and pt.get("y") in classes:
        st.session_state["classes_true"] = classes.index(pt["y"])
        st.session_state["classes_pred"] = classes.index(pt["x"])
st.session_state.setdefault("classes_true", default_true)
st.session_state.setdefault("classes_pred", default_pred)

st.markdown(_("**Samples of a cell** (click a cell above, or choose it here)"))
s1, s2 = st.columns(2)
t = s1.selectbox(_("True class"), range(k), format_func=lambda i: classes[i], key="classes_true")
p = s2.selectbox(_("Predicted class"), range(k), format_func=lambda i: classes[i], key="classes_pred")
idx = errors.cell_indices(ev.labels, ev.preds, t, p)
idx = idx[errors.ranking_scores(ev.probs[idx], ev.losses[idx], ev.labels[idx], "loss").argsort()[::-1]]
# the same English text for one and many (as before); Russian needs its three plural forms
st.write(ngettext("**{n}** {split} samples of class *{true}* predicted as *{pred}*",
                  "**{n}** {split} samples of class *{true}* predicted as *{pred}*", len(idx)).format(
    n=len(idx), split=widgets.split_label(split), true=classes[t], pred=classes[p])
    + (_(" (showing the {shown} with the highest loss)").format(shown=MAX_SHOWN) if len(idx) > MAX_SHOWN else ""))
if len(idx):
    scale = display_scale(data.input_shape[1], 56)
    images = data.images(split)
    st.image(grid([as_image(images[int(i)], scale) for i in idx[:MAX_SHOWN]], ncols=12),
             caption=_("indices {indices}").format(
                 indices=", ".join(str(int(i)) for i in idx[:12]) + (" …" if len(idx) > 12 else "")))
else:
    st.info(_("No samples in this cell."))

st.subheader(_("Most confused pairs"))
if pairs:
    st.dataframe(pd.DataFrame([{"rank": r + 1, "true": classes[q.true], "predicted as": classes[q.pred],
                                "count": q.count, "share of the true class": num(q.rate, ".1%")}
                               for r, q in enumerate(pairs[:20])]), hide_index=True, width="stretch",
                 key="classes_pairs",
                 column_config={"rank": _("rank"), "true": _("true"), "predicted as": _("predicted as"),
                                "count": _("count"), "share of the true class": _("share of the true class")})
else:
    st.success(_("No confusions at all on this split."))
