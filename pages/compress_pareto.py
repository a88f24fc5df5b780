"""Pareto: accuracy against size and latency for the base model and its variants; automatic search."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import compression.tasks  # noqa: F401 - registers the compression job kinds
from compression import export, pareto
from compression import search as csearch
from nnlab.jobs import manager as jobs
from nnlab.ui import session, widgets

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title("nnlab · Pareto")
cur = session.current()
ws = session.workspace()

variants = ws.list_variants()
scope = st.radio("Variants shown", ["of this model", "of this dataset (all parents)"], key="pareto_scope",
                 horizontal=True)
if scope == "of this model":
    shown = [v for v in variants if v.parent == cur.model_id]
else:
    shown = [v for v in variants if v.dataset == cur.data.id]
records = [cur.record, *[v for v in shown if v.status == "ok"]]
st.caption(f"Base **{cur.record.name}** and {len(records) - 1} variant(s). Bubble area ∝ MACs, colour = method "
           "or runtime, a star marks the base; the dashed line is the Pareto frontier (no other point is both more "
           "accurate and cheaper). On the latency axes the base appears once per runtime it was timed in (fp32), so "
           "a variant is read against the base in its own runtime; each variant's speed-up in the table is measured "
           "beside the base in that runtime, in one run. "
           "Select points (click, box or lasso) to compare them.")
old_records = pareto.stale(records)
if old_records:
    st.warning(f"{len(old_records)} record(s) were timed by an older latency harness (or without their base beside "
               "them): they are left off the latency axes and their speed-ups are not shown until measured again: "
               + ", ".join(r.name for r in old_records[:6]) + (" …" if len(old_records) > 6 else ""))
    if st.button("Measure them again", key="pareto_remeasure"):
        jobs.submit("remeasure", {"model_id": cur.model_id, "data": cur.data_ref,
                                  "ids": [r.id for r in old_records if r.id == cur.model_id or r.parent == cur.model_id]},
                    owner=session.owner())
        st.info("Measuring again in the background (Jobs page); the plots update when it is done.")
if len(records) == 1:
    st.info("No variant yet: make some in the Compression lab, or run the automatic search below.")

color_by = st.radio("Colour by", ["method", "runtime"], key="pareto_color_by", horizontal=True,
                    help="runtime: what executed each model's latency measurement (OpenVINO, ONNX Runtime, "
                         "PyTorch …), threads as stated in its record")
tab_size, tab_lat, tab_macs = st.tabs(["Accuracy vs size", "Accuracy vs latency", "Accuracy vs MACs"])
picked: list[str] = []
figs = {}
for tab, cost in ((tab_size, "size"), (tab_lat, "latency"), (tab_macs, "macs")):
    with tab:
        fig = pareto.pareto_figure(records, cost, base_id=cur.record.id, color_by=color_by)
        figs[cost] = fig
        event = widgets.chart(fig, key=f"pareto_fig_{cost}", on_select="rerun",
                              selection_mode=("points", "box", "lasso"))
        picked += [i for i in pareto.selected_ids(event) if i not in picked]
        front = pareto.frontier(records, cost)
        st.markdown(f"**Frontier ({pareto.COSTS[cost].lower()}):** " + " → ".join(
            f"{r.name} ({r.accuracy:.2%})" for r in front))

if picked:
    st.session_state["compare_ids"] = picked
    names = {r.id: r.name for r in records}
    st.success("Selected: " + ", ".join(names.get(i, i) for i in picked))
    if st.button("Open the comparison", key="pareto_open_compare", type="primary"):
        st.switch_page("pages/compress_compare.py")
    st.page_link("pages/compress_diagnose.py", label="Diagnose the selected variant against the base",
                 icon=":material/troubleshoot:")

cost = st.radio("Frontier of the table", list(pareto.COSTS), key="pareto_cost", horizontal=True,
                format_func=lambda k: pareto.COSTS[k])
table = pd.DataFrame(pareto.summary_rows(records, cur.record, cost))
st.dataframe(table, hide_index=True, width="stretch", key="pareto_table",
             column_config={"name": st.column_config.TextColumn(pinned=True),
                            "accuracy": st.column_config.NumberColumn(format="percent"),
                            "sparsity": st.column_config.NumberColumn(format="percent"),
                            pareto.SPEEDUP_SAME: st.column_config.NumberColumn(format="%.2f×"),
                            pareto.SPEEDUP_SAME_32: st.column_config.NumberColumn(format="%.2f×"),
                            pareto.SPEEDUP_FASTEST: st.column_config.NumberColumn(format="%.2f×")})
d1, d2, d4 = st.columns(3)  # PNG and SVG of each figure: the buttons under it
d1.download_button("Figure (HTML)", lambda: export.figure_html(figs["size"]), file_name="pareto-size.html",
                   mime="text/html", key="pareto_dl_html", on_click="ignore")
d2.download_button("Latency figure (HTML)", lambda: export.figure_html(figs["latency"]),
                   file_name="pareto-latency.html", mime="text/html", key="pareto_dl_html_lat", on_click="ignore")
d4.download_button("Records (JSON)", export.records_json(records), file_name="pareto-records.json",
                   mime="application/json", key="pareto_dl_records")

st.divider()
st.subheader("Automatic search")
st.caption("Tries methods and levels and keeps the whole frontier within the accuracy-drop budget: *grid* measures "
           "every candidate; *halving* screens them on held-out training samples first and measures only the "
           "promising ones; *nsga2* (Optuna's NSGA-II) searches the pipeline space (pruning level, then weight bits "
           "or a cluster count) for accuracy against cost. Each measurement is a task: in this process, or on Ray "
           "(local by default; a cluster with `make run RAY_ADDRESS=…`).")
s1, s2, s3, s4, s5 = st.columns(5)
budget = s1.number_input("Accuracy-drop budget (points)", 0.0, 100.0, 1.0, step=0.5, key="pareto_budget")
strategy = s2.radio("Strategy", ["grid", "halving", "nsga2"], key="pareto_strategy", horizontal=True)
s_cost = s3.selectbox("Cost", ["size", "latency", "macs"], key="pareto_search_cost")
keep_all = s4.checkbox("Keep every variant (not only the frontier)", key="pareto_keep_all")
on_ray = s5.checkbox("Run the tasks on Ray", key="pareto_ray", help="Local Ray unless NNLAB_RAY_ADDRESS or "
                     "--ray-address names a cluster; threads per task are fixed (1) and recorded with each result")
trials = int(st.number_input("NSGA-II trials", 4, 1000, 24, step=4, key="pareto_trials")) if strategy == "nsga2" \
    else None
grid_text = st.text_area("Candidates (JSON: a list of pipelines, each a list of method configs)",
                         json.dumps(csearch.default_grid()), key="pareto_grid", height=100)
try:
    candidates = json.loads(grid_text)
    csearch.parse_candidates(candidates)
    bad = None
except (ValueError, TypeError, AttributeError) as exc:
    candidates, bad = None, f"The candidate list is not valid: {exc}"
if bad:
    st.error(bad)
search_params = {"model_id": cur.model_id, "data": cur.data_ref, "budget": budget / 100, "strategy": strategy,
                 "cost": s_cost, "keep_all": bool(keep_all), "candidates": candidates if strategy != "nsga2" else None,
                 "use_ray": bool(on_ray), "trials": trials}
if st.button("Run search", key="pareto_search_run", type="primary", disabled=bad is not None):
    st.session_state["pareto_search_job"] = jobs.submit("search", search_params, owner=session.owner(),
                                                        rerun=True).key
sjob = jobs.get(st.session_state.get("pareto_search_job", ""))
search_polling = sjob is not None and sjob.active  # as of this full run


@st.fragment(run_every=1 if search_polling else None)
def search_panel() -> None:
    j = jobs.get(st.session_state.get("pareto_search_job", ""))
    if j is None:
        return
    s = j.snapshot()
    if j.active:
        st.progress(s["fraction"], text=session.progress_text(s))
        st.button("Cancel search", key="pareto_search_cancel", on_click=j.cancel)
        tasks = (s.get("metrics") or {}).get("tasks") or {}
        for i, t in sorted(tasks.items(), key=lambda kv: int(kv[0]))[-12:]:
            st.progress(min(1.0, float(t["fraction"])), text=f"task {int(i) + 1}: {t['message']}")
    elif j.status == jobs.DONE:
        res = j.result or {}
        st.success(f"Search done in {s['elapsed']:.0f} s: {len(res.get('within_budget', []))} variant(s) within "
                   f"{100 * res.get('budget', 0):g} points, {len(res.get('frontier', []))} point(s) on the frontier: "
                   + " → ".join(f"{r['name']} ({r['accuracy']:.2%})" for r in res.get("frontier", [])))
        st.dataframe(pd.DataFrame(res.get("rows", [])), hide_index=True, width="stretch", key="pareto_search_table")
    elif j.status == jobs.CANCELLED:
        st.warning("Search cancelled; variants measured so far are kept.")
    else:
        st.error(f"The search {j.status}: {s['error']}")
    if search_polling and not j.active:
        st.rerun(scope="app")  # new variants appear in the plots


search_panel()
