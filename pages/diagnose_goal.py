"""Error vs goal: E_train, E_test, E_goal and the lecture's diagnosis, each action with measured evidence."""

from __future__ import annotations

import streamlit as st

from diagnostics import datacheck
from diagnostics import tasks as dtasks  # noqa: F401 - registers the diagnostics' job kinds
from diagnostics.curves import cached_curves, error_slope
from diagnostics.diagnosis import CONTRADICTED, NEUTRAL, SUPPORTED, UNMEASURED, default_goal, diagnose
from nnlab.jobs import manager as jobs
from nnlab.ui import session

AUTO_DATA_CHECK_MAX_TRAIN = 10000  # below this many training images the data checks run without asking
TITLES = {"pages/diagnose_data.py": "Data checks", "pages/diagnose_curves.py": "Learning curves",
          "pages/diagnose_worst.py": "Worst errors", "pages/diagnose_classes.py": "Errors by class"}
ICONS = {SUPPORTED: ":green[:material/check_circle:]", CONTRADICTED: ":red[:material/block:]",
         NEUTRAL: ":gray[:material/remove:]", UNMEASURED: ":orange[:material/help:]"}


@st.cache_data(max_entries=8)
def _cheap(dataset_id: str, _data) -> dict:
    return datacheck.cheap_summary(_data)


session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title("Error against a goal")
cur = session.current()
ev_test = session.evaluation("test", cur)
ev_train = session.evaluation("train", cur)
e_test, e_train = ev_test.error, ev_train.error

st.caption("Lecture 4: low effectiveness means a large test error. Compare E_train and E_test with the goal E_goal "
           "to decide whether to work on fitting (E_train > E_goal) or on generalisation (E_train < E_goal < E_test).")
goal_pct = st.number_input("E_goal, the target test error (%)", min_value=0.0, max_value=100.0, step=0.1,
                           value=round(default_goal(e_test) * 100, 2), key="goal_e_goal",
                           help="Default: a few points better than the current test error, "
                                "max(E_test/2, E_test − 3).")
e_goal = goal_pct / 100

c1, c2, c3, c4 = st.columns(4)
c1.metric("E_train", f"{e_train:.2%}", help=f"Error on all {len(ev_train.labels):,} training images, eval mode.")
c2.metric("E_test", f"{e_test:.2%}", help=f"Error on all {len(ev_test.labels):,} test images.")
c3.metric("E_goal", f"{e_goal:.2%}")
c4.metric("E_test − E_goal", f"{e_test - e_goal:+.2%}", delta_color="inverse")

ws = session.workspace()
summary = ws.load_run(datacheck.report_key(cur.model_id, cur.data.id))
if summary is None:
    check_params = {"model_id": cur.model_id, "data": cur.data_ref}
    djob = jobs.find("data-checks", check_params)
    clicked = False
    if len(cur.data.y_train) <= AUTO_DATA_CHECK_MAX_TRAIN or (djob is not None and djob.active) or (
            clicked := st.button("Measure the data evidence now", key="goal_measure_data")):
        session.run_job("data-checks", check_params, retry=clicked, what="The data checks",
                        title="Measuring the data evidence (label errors, train/test mismatch)…")
        summary = ws.load_run(datacheck.report_key(cur.model_id, cur.data.id))
    else:
        st.info("Label errors and the train/test mismatch are not measured yet for this model "
                f"({len(cur.data.y_train):,} training images: about a minute). Press the button above, or open "
                "the Data checks page.")
curves = cached_curves(ws, cur.model_id, cur.data.id)
slope = error_slope(curves[0][1]) if curves else None
facts = datacheck.facts_from({**_cheap(cur.data.id, cur.data), **(summary or {})}, cur.history, slope)
try:
    d = diagnose(e_train, e_test, e_goal, facts, n_test=len(ev_test.labels))
except ValueError as exc:
    st.error(str(exc))
    st.stop()

st.subheader(f"Diagnosis: {d.regime}")
(st.success if d.regime == "goal met" else st.warning)(d.headline)
for note in d.notes:
    st.info(note)
if d.actions:
    st.markdown("**The lecture's actions, with what nnlab measured** (:green[:material/check_circle: supported] · "
                ":red[:material/block: contradicted by the evidence] · :gray[:material/remove: neutral] · "
                ":orange[:material/help: not measured yet])")
    for i, a in enumerate(d.actions):
        with st.container(border=True):
            left, right = st.columns([5, 1])
            left.markdown(f"{ICONS[a.verdict]} **{a.text}** — *{a.verdict}*  \n{a.evidence}")
            if a.page:
                right.page_link(a.page, label=TITLES.get(a.page, a.page))
    for a in d.contradictions:
        st.error(f"**{a.text}** is a generic remedy, but here the evidence speaks against it: {a.evidence}")
if curves:
    st.caption(f"Learning-curve slope from the cached run `{curves[0][0]}`.")
if summary:
    st.caption(f"Data evidence: {summary.get('label_method', '')}; computed in {summary.get('seconds', 0):.1f} s.")
