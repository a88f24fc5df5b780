"""Worst errors: a gallery sorted by loss, wrong-prediction confidence or margin, filtered by class, paged."""

from __future__ import annotations

import numpy as np
import streamlit as st

from diagnostics import errors
from nnlab import i18n
from nnlab.data.viz import as_image, display_scale
from nnlab.i18n import _, num
from nnlab.ui import session, widgets

ATTRIBUTION_PAGE = "pages/inside_attributions.py"
ANY = -1


@st.cache_data(max_entries=64)
def _order(model_id: str, dataset_id: str, split: str, by: str, true_class: int, pred_class: int,
           only_wrong: bool, _ev) -> list[int]:
    order = errors.rank_samples(_ev.probs, _ev.losses, _ev.labels, by,
                                None if true_class == ANY else true_class, None if pred_class == ANY else pred_class,
                                only_wrong)
    return order.tolist()


def _inspect(index: int, split: str) -> None:
    st.session_state["inspect_index"] = index
    st.session_state["inspect_split"] = split
    st.switch_page(ATTRIBUTION_PAGE)


session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Worst errors"))
cur = session.current()
data = cur.data
classes = data.classes
opts = [ANY, *range(data.num_classes)]

c1, c2, c3, c4 = st.columns([1, 2, 2, 2])
split = c1.radio(_("Split"), widgets.SPLITS, key="worst_split", format_func=widgets.split_label)
by = c2.selectbox(_("Sort by"), list(errors.SORTS), format_func=lambda s: _(errors.SORTS[s]), key="worst_sort")
true_class = c3.selectbox(_("True class"), opts, format_func=lambda i: _("any") if i == ANY else classes[i],
                          key="worst_true")
pred_class = c4.selectbox(_("Predicted class"), opts, format_func=lambda i: _("any") if i == ANY else classes[i],
                          key="worst_pred")
o1, o2, _o3 = st.columns([2, 2, 3])
only_wrong = o1.checkbox(_("Misclassified only"), value=True, key="worst_only_wrong")
per_page = o2.select_slider(_("Per page"), [8, 12, 16, 24, 32], value=12, key="worst_per_page")

ev = session.evaluation(split, cur)
order = _order(cur.model_id, data.id, split, by, int(true_class), int(pred_class), bool(only_wrong), ev)
n_wrong = int((ev.preds != ev.labels).sum())
st.caption(_("{n} samples match ({wrong} of {total} {split} images are misclassified). Sorted by {sort}.").format(
    n=num(len(order), ","), wrong=num(n_wrong, ","), total=num(len(ev.labels), ","), split=widgets.split_label(split),
    sort=_(errors.SORTS[by])))
if not order:
    st.info(_("No sample matches these filters."))
    st.stop()

pages = errors.num_pages(len(order), per_page)
if st.session_state.get("worst_page", 1) > pages:
    st.session_state["worst_page"] = pages
page = st.number_input(_("Page (of {pages})").format(pages=pages), min_value=1, max_value=pages, value=1, step=1,
                       key="worst_page")
shown = errors.page_of(np.asarray(order), page - 1, per_page)

images = data.images(split)
scale = display_scale(data.input_shape[1], 96)
ncols = 4
for row_start in range(0, len(shown), ncols):
    cols = st.columns(ncols)
    for col, i in zip(cols, shown[row_start:row_start + ncols]):
        i = int(i)
        true, pred = int(ev.labels[i]), int(ev.preds[i])
        with col.container(border=True, key=f"worst_card_{split}_{i}"):
            st.image(as_image(images[i], scale), caption=f"#{i}")
            # plain words: no emoji font needed
            verdict = ":green[{}]".format(_("right")) if true == pred else ":red[{}]".format(_("wrong"))
            st.markdown(_("{verdict} · true **{true}** · predicted **{pred}**  \n"
                          "loss {loss} · p(pred) {p_pred} · p(true) {p_true}").format(
                verdict=verdict, true=classes[true], pred=classes[pred], loss=num(ev.losses[i], ".3f"),
                p_pred=num(ev.probs[i, pred], ".2f"), p_true=num(ev.probs[i, true], ".2f")))
            top5 = errors.topk_figure(classes, ev.probs[i], true).update_layout(separators=i18n.plotly_separators())
            widgets.chart(top5, key=f"worst_top5_{split}_{i}",
                          config={"displayModeBar": False})
            if st.button(_("Attributions"), icon=":material/visibility:", key=f"worst_inspect_{split}_{i}",
                         help=_("Open this sample in Deconvnet and attributions")):
                _inspect(i, split)
