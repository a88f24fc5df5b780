"""Error vs goal: E_train, E_test, E_goal and the lecture's diagnosis, each action with measured evidence."""

from __future__ import annotations

import streamlit as st

from diagnostics import datacheck
from diagnostics import tasks as dtasks  # noqa: F401 - registers the diagnostics' job kinds
from diagnostics.curves import cached_curves, error_slope
from diagnostics.diagnosis import (CONTRADICTED, NEUTRAL, SUPPORTED, UNMEASURED, default_goal, diagnose, regime_label,
                                   verdict_label)
from nnlab.i18n import N_, _, num
from nnlab.jobs import manager as jobs
from nnlab.ui import session

AUTO_DATA_CHECK_MAX_TRAIN = 10000  # below this many training images the data checks run without asking
TITLES = {"pages/diagnose_data.py": N_("Data checks"), "pages/diagnose_curves.py": N_("Learning curves"),
          "pages/diagnose_worst.py": N_("Worst errors"), "pages/diagnose_classes.py": N_("Errors by class")}
ICONS = {SUPPORTED: ":green[:material/check_circle:]", CONTRADICTED: ":red[:material/block:]",
         NEUTRAL: ":gray[:material/remove:]", UNMEASURED: ":orange[:material/help:]"}


@st.cache_data(max_entries=8)
def _cheap(dataset_id: str, _data) -> dict:
    return datacheck.cheap_summary(_data)


session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Error against a goal"))
cur = session.current()
ev_test = session.evaluation("test", cur)
ev_train = session.evaluation("train", cur)
e_test, e_train = ev_test.error, ev_train.error

st.caption(_("Lecture 4: low effectiveness means a large test error. Compare E_train and E_test with the goal E_goal "
             "to decide whether to work on fitting (E_train > E_goal) or on generalisation "
             "(E_train < E_goal < E_test)."))
goal_pct = st.number_input(_("E_goal, the target test error (%)"), min_value=0.0, max_value=100.0, step=0.1,
                           value=round(default_goal(e_test) * 100, 2), key="goal_e_goal",
                           help=_("Default: a few points better than the current test error, "
                                  "max(E_test/2, E_test − 3)."))
e_goal = goal_pct / 100

c1, c2, c3, c4 = st.columns(4)
c1.metric("E_train", num(e_train, ".2%"), help=_("Error on all {n} training images, eval mode.").format(
    n=num(len(ev_train.labels), ",")))
c2.metric("E_test", num(e_test, ".2%"), help=_("Error on all {n} test images.").format(n=num(len(ev_test.labels), ",")))
c3.metric("E_goal", num(e_goal, ".2%"))
c4.metric(_("E_test − E_goal"), num(e_test - e_goal, "+.2%"), delta_color="inverse")

ws = session.workspace()
summary = ws.load_run(datacheck.report_key(cur.model_id, cur.data.id))
if summary is None:
    check_params = {"model_id": cur.model_id, "data": cur.data_ref}
    djob = jobs.find("data-checks", check_params)
    clicked = False
    if len(cur.data.y_train) <= AUTO_DATA_CHECK_MAX_TRAIN or (djob is not None and djob.active) or (
            clicked := st.button(_("Measure the data evidence now"), key="goal_measure_data")):
        session.run_job("data-checks", check_params, retry=clicked, what=_("The data checks"),
                        title=_("Measuring the data evidence (label errors, train/test mismatch)…"))
        summary = ws.load_run(datacheck.report_key(cur.model_id, cur.data.id))
    else:
        st.info(_("Label errors and the train/test mismatch are not measured yet for this model "
                  "({n} training images: about a minute). Press the button above, or open "
                  "the Data checks page.").format(n=num(len(cur.data.y_train), ",")))
curves = cached_curves(ws, cur.model_id, cur.data.id)
slope = error_slope(curves[0][1]) if curves else None
facts = datacheck.facts_from({**_cheap(cur.data.id, cur.data), **(summary or {})}, cur.history, slope)
try:
    d = diagnose(e_train, e_test, e_goal, facts, n_test=len(ev_test.labels))
except ValueError as exc:
    st.error(_(str(exc)))
    st.stop()

st.subheader(_("Diagnosis: {regime}").format(regime=regime_label(d.regime)))
(st.success if d.regime == "goal met" else st.warning)(_(d.headline))
for note in d.notes:
    st.info(_(note))
if d.actions:
    st.markdown(_("**The lecture's actions, with what nnlab measured** (:green[:material/check_circle: supported] · "
                  ":red[:material/block: contradicted by the evidence] · :gray[:material/remove: neutral] · "
                  ":orange[:material/help: not measured yet])"))
    for i, a in enumerate(d.actions):
        with st.container(border=True):
            left, right = st.columns([5, 1])
            left.markdown(f"{ICONS[a.verdict]} **{_(a.text)}** — *{verdict_label(a.verdict)}*  \n{_(a.evidence)}")
            if a.page:
                right.page_link(a.page, label=_(TITLES[a.page]) if a.page in TITLES else a.page)
    for a in d.contradictions:
        st.error(_("**{action}** is a generic remedy, but here the evidence speaks against it: {evidence}").format(
            action=_(a.text), evidence=_(a.evidence)))
if curves:
    st.caption(_("Learning-curve slope from the cached run `{run}`.").format(run=curves[0][0]))
if summary:
    st.caption(_("Data evidence: {method}; computed in {seconds} s.").format(
        method=datacheck.shown_label_method(summary.get("label_checked", 0), summary.get("label_method", ""),
                                            len(cur.data.y_train)),
        seconds=num(summary.get("seconds", 0), ".1f")))
