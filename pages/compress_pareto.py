"""Pareto: accuracy against size and latency for the base model and its variants; automatic search."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import compression.tasks  # noqa: F401 - registers the compression job kinds
from compression import export, pareto
from compression import search as csearch
from nnlab import i18n
from nnlab.i18n import N_, _, num
from nnlab.jobs import manager as jobs
from nnlab.ui import columns, session, widgets

SCOPES = {"of this model": N_("of this model"), "of this dataset (all parents)": N_("of this dataset (all parents)")}
COLOR_BY = {"method": N_("method"), "runtime": N_("runtime")}
STRATEGIES = {"grid": N_("grid"), "halving": N_("halving"), "nsga2": N_("nsga2")}
SEARCH_COSTS = {"size": N_("size"), "latency": N_("latency"), "macs": N_("MACs")}
ENDED = {jobs.FAILED: N_("The search failed: {error}"), jobs.INTERRUPTED: N_("The search interrupted: {error}")}

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("nnlab · Pareto"))
cur = session.current()
ws = session.workspace()

variants = ws.list_variants()
scope = st.radio(_("Variants shown"), list(SCOPES), key="pareto_scope", horizontal=True,
                 format_func=lambda k: _(SCOPES[k]))
if scope == "of this model":
    shown = [v for v in variants if v.parent == cur.model_id]
else:
    shown = [v for v in variants if v.dataset == cur.data.id]
records = [cur.record, *[v for v in shown if v.status == "ok"]]
st.caption(_("Base **{name}** and {n} variant(s). Bubble area ∝ MACs, colour = method or runtime, a star marks the "
             "base; the dashed line is the Pareto frontier (no other point is both more accurate and cheaper). On the "
             "latency axes the base appears once per runtime it was timed in (fp32), so a variant is read against the "
             "base in its own runtime; each variant's speed-up in the table is measured beside the base in that "
             "runtime, in one run. Select points (click, box or lasso) to compare them.").format(
    name=cur.record.name, n=len(records) - 1))
old_records = pareto.stale(records)
if old_records:
    st.warning(_("{n} record(s) were timed by an older latency harness (or without their base beside them): they "
                 "are left off the latency axes and their speed-ups are not shown until measured again: {names}")
               .format(n=len(old_records),
                       names=", ".join(r.name for r in old_records[:6]) + (" …" if len(old_records) > 6 else "")))
    if st.button(_("Measure them again"), key="pareto_remeasure"):
        jobs.submit("remeasure", {"model_id": cur.model_id, "data": cur.data_ref,
                                  "ids": [r.id for r in old_records if r.id == cur.model_id or r.parent == cur.model_id]},
                    owner=session.owner())
        st.info(_("Measuring again in the background (Jobs page); the plots update when it is done."))
if len(records) == 1:
    st.info(_("No variant yet: make some in the Compression lab, or run the automatic search below."))

color_by = st.radio(_("Colour by"), list(COLOR_BY), key="pareto_color_by", horizontal=True,
                    format_func=lambda k: _(COLOR_BY[k]),
                    help=_("runtime: what executed each model's latency measurement (OpenVINO, ONNX Runtime, "
                           "PyTorch …), threads as stated in its record"))
tab_size, tab_lat, tab_macs = st.tabs([_("Accuracy vs size"), _("Accuracy vs latency"), _("Accuracy vs MACs")])
picked: list[str] = []
figs = {}
for tab, cost in ((tab_size, "size"), (tab_lat, "latency"), (tab_macs, "macs")):
    with tab:
        fig = pareto.pareto_figure(records, cost, base_id=cur.record.id, color_by=color_by)
        fig.update_layout(separators=i18n.plotly_separators())
        figs[cost] = fig
        event = widgets.chart(fig, key=f"pareto_fig_{cost}", on_select="rerun",
                              selection_mode=("points", "box", "lasso"))
        picked += [i for i in pareto.selected_ids(event) if i not in picked]
        front = pareto.frontier(records, cost)
        st.markdown(_("**Frontier ({cost}):** {points}").format(
            cost=_(pareto.COSTS[cost]).lower(),
            points=" → ".join(f"{r.name} ({num(r.accuracy, '.2%')})" for r in front)))

if picked:
    st.session_state["compare_ids"] = picked
    names = {r.id: r.name for r in records}
    st.success(_("Selected: {names}").format(names=", ".join(names.get(i, i) for i in picked)))
    if st.button(_("Open the comparison"), key="pareto_open_compare", type="primary"):
        st.switch_page("pages/compress_compare.py")
    st.page_link("pages/compress_diagnose.py", label=_("Diagnose the selected variant against the base"),
                 icon=":material/troubleshoot:")

cost = st.radio(_("Frontier of the table"), list(pareto.COSTS), key="pareto_cost", horizontal=True,
                format_func=lambda k: _(pareto.COSTS[k]))
table = pd.DataFrame(pareto.summary_rows(records, cur.record, cost))
st.dataframe(table, hide_index=True, width="stretch", key="pareto_table",
             column_config=columns.labels(table.columns, {
                 "name": st.column_config.TextColumn(pinned=True),
                 "accuracy": st.column_config.NumberColumn(format="percent"),
                 "sparsity": st.column_config.NumberColumn(format="percent"),
                 pareto.SPEEDUP_SAME: st.column_config.NumberColumn(format="%.2f×"),
                 pareto.SPEEDUP_SAME_32: st.column_config.NumberColumn(format="%.2f×"),
                 pareto.SPEEDUP_FASTEST: st.column_config.NumberColumn(format="%.2f×")}))
d1, d2, d4 = st.columns(3)  # PNG and SVG of each figure: the buttons under it
d1.download_button(_("Figure (HTML)"), lambda: export.figure_html(figs["size"]), file_name="pareto-size.html",
                   mime="text/html", key="pareto_dl_html", on_click="ignore")
d2.download_button(_("Latency figure (HTML)"), lambda: export.figure_html(figs["latency"]),
                   file_name="pareto-latency.html", mime="text/html", key="pareto_dl_html_lat", on_click="ignore")
d4.download_button(_("Records (JSON)"), export.records_json(records), file_name="pareto-records.json",
                   mime="application/json", key="pareto_dl_records")

st.divider()
st.subheader(_("Automatic search"))
st.caption(_("Tries methods and levels and keeps the whole frontier within the accuracy-drop budget: *grid* measures "
             "every candidate; *halving* screens them on held-out training samples first and measures only the "
             "promising ones; *nsga2* (Optuna's NSGA-II) searches the pipeline space (pruning level, then weight bits "
             "or a cluster count) for accuracy against cost. Each measurement is a task: in this process, or on Ray "
             "(local by default; a cluster with `make run RAY_ADDRESS=…`)."))
s1, s2, s3, s4, s5 = st.columns(5)
budget = s1.number_input(_("Accuracy-drop budget (points)"), 0.0, 100.0, 1.0, step=0.5, key="pareto_budget")
strategy = s2.radio(_("Strategy"), list(STRATEGIES), key="pareto_strategy", horizontal=True,
                    format_func=lambda k: _(STRATEGIES[k]))
s_cost = s3.selectbox(_("Cost"), list(SEARCH_COSTS), key="pareto_search_cost", format_func=lambda k: _(SEARCH_COSTS[k]))
keep_all = s4.checkbox(_("Keep every variant (not only the frontier)"), key="pareto_keep_all")
on_ray = s5.checkbox(_("Run the tasks on Ray"), key="pareto_ray",
                     help=_("Local Ray unless NNLAB_RAY_ADDRESS or --ray-address names a cluster; threads per task "
                            "are fixed (1) and recorded with each result"))
trials = int(st.number_input(_("NSGA-II trials"), 4, 1000, 24, step=4, key="pareto_trials")) \
    if strategy == "nsga2" else None
grid_text = st.text_area(_("Candidates (JSON: a list of pipelines, each a list of method configs)"),
                         json.dumps(csearch.default_grid()), key="pareto_grid", height=100)
try:
    candidates = json.loads(grid_text)
    csearch.parse_candidates(candidates)
    bad = None
except (ValueError, TypeError, AttributeError) as exc:
    candidates, bad = None, _("The candidate list is not valid: {error}").format(error=exc)
if bad:
    st.error(bad)
search_params = {"model_id": cur.model_id, "data": cur.data_ref, "budget": budget / 100, "strategy": strategy,
                 "cost": s_cost, "keep_all": bool(keep_all), "candidates": candidates if strategy != "nsga2" else None,
                 "use_ray": bool(on_ray), "trials": trials}
if st.button(_("Run search"), key="pareto_search_run", type="primary", disabled=bad is not None):
    st.session_state["pareto_search_job"] = jobs.submit("search", search_params, owner=session.owner(),
                                                        rerun=True).key
sjob = jobs.get(st.session_state.get("pareto_search_job", ""))
search_polling = sjob is not None and sjob.active  # as of this full run


@st.fragment(run_every=1 if search_polling else None)
def search_panel() -> None:
    session.apply_language()  # a fragment's own rerun runs in a new thread, without app.py: set it again
    j = jobs.get(st.session_state.get("pareto_search_job", ""))
    if j is None:
        return
    s = j.snapshot()
    if j.active:
        st.progress(s["fraction"], text=session.progress_text(s))
        st.button(_("Cancel search"), key="pareto_search_cancel", on_click=j.cancel)
        tasks = (s.get("metrics") or {}).get("tasks") or {}
        for i, t in sorted(tasks.items(), key=lambda kv: int(kv[0]))[-12:]:
            st.progress(min(1.0, float(t["fraction"])),
                        text=_("task {i}: {message}").format(i=int(i) + 1, message=t["message"]))
    elif j.status == jobs.DONE:
        res = j.result or {}
        st.success(_("Search done in {seconds} s: {n} variant(s) within {budget} points, {k} point(s) on the "
                     "frontier: {points}").format(
            seconds=num(s["elapsed"], ".0f"), n=len(res.get("within_budget", [])),
            budget=num(100 * res.get("budget", 0), "g"), k=len(res.get("frontier", [])),
            points=" → ".join(f"{r['name']} ({num(r['accuracy'], '.2%')})" for r in res.get("frontier", []))))
        rows = pd.DataFrame(res.get("rows", []))
        st.dataframe(rows, hide_index=True, width="stretch", key="pareto_search_table",
                     column_config=columns.labels(rows.columns))
    elif j.status == jobs.CANCELLED:
        st.warning(_("Search cancelled; variants measured so far are kept."))
    else:
        st.error(_(ENDED.get(j.status, ENDED[jobs.FAILED])).format(error=s["error"]))
    if search_polling and not j.active:
        st.rerun(scope="app")  # new variants appear in the plots


search_panel()
