"""Jobs: every background job of this server (all sessions): queued, running, finished, failed, interrupted."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from nnlab.i18n import _
from nnlab.jobs import manager as jobs
from nnlab.ui import session

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Jobs"))
mgr = jobs.manager()
st.caption(_("Long work runs here, shared by every browser session: at most {n} heavy job(s) at once "
             "(`NNLAB_MAX_JOBS`), the others wait in the queue. Jobs survive page changes and closed tabs; after a "
             "restart, jobs that were running show as interrupted and can be run again.").format(n=jobs.max_heavy())
           + " " + _("The work of the model and dataset loaded in the sidebar goes ahead of background work; a queued "
                     "job says what it waits behind, and you may move it up or cancel what blocks it."))

all_jobs = mgr.list()
active = [j for j in all_jobs if j.active]
finished = [j for j in all_jobs if not j.active]


@st.fragment(run_every=1.0 if active else None)
def live() -> None:
    now_active = [j for j in mgr.list() if j.active]
    st.subheader(_("Running and queued ({n})").format(n=len(now_active)))
    if not now_active:
        st.caption(_("Nothing is running."))
    for job in now_active:
        snap = job.snapshot()
        c1, c2 = st.columns([6, 1], vertical_alignment="center")
        first = _("(the loaded selection's work goes first)") if snap["priority"] >= jobs.SELECTION else ""
        c1.progress(min(1.0, snap["fraction"]), text=f"**{jobs.label_of(job)}** · {session.progress_text(snap)}"
                    + (f" {first}" if first and snap["status"] == jobs.QUEUED else ""))
        c2.button(_("Cancel"), key=f"jobs_cancel_{job.key}", on_click=job.cancel, disabled=snap["cancel_requested"])
        if snap["status"] == jobs.QUEUED:
            with c1:
                session.queue_controls(job, "jobs")
    if len(now_active) != len(active):
        st.rerun(scope="app")


live()

st.subheader(_("Finished ({n})").format(n=len(finished)))
if not finished:
    st.caption(_("No finished job yet."))
else:
    rows = [{_("job"): jobs.label_of(j), _("status"): jobs.status_label(j.status), _("took (s)"): round(j.elapsed, 1),
             _("finished"): time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.finished)) if j.finished else "",
             _("runs"): j.runs, _("reason"): j.error, _("key"): j.key} for j in finished]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="jobs_table")
    again = [j for j in finished if j.status in (jobs.INTERRUPTED, jobs.FAILED, jobs.CANCELLED)]
    if again:
        st.subheader(_("Run again"))
        for job in again[:20]:
            c1, c2 = st.columns([6, 1], vertical_alignment="center")
            c1.write(f"**{jobs.label_of(job)}** — {jobs.status_label(job.status)}"
                     + (f": {job.error}" if job.error else ""))
            if c2.button(_("Run again"), key=f"jobs_rerun_{job.key}"):
                mgr.rerun(job.key, owner=session.owner())
                st.rerun()
    if st.button(_("Clear finished jobs from this list"), key="jobs_clear"):
        for job in finished:
            mgr.forget(job.key)
        st.rerun()
