"""Compression lab: pick a method or build a pipeline, run it in the background, manage the variants."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import compression
import compression.tasks  # noqa: F401 - registers the compression job kinds
from compression import defaults, export
from compression.compare import weight_sparsity
from compression.pareto import runtime_note
from compression.registry import get_method, list_methods
from nnlab import i18n
from nnlab.i18n import N_, _, num
from nnlab.jobs import manager as jobs
from nnlab.ui import columns, session, widgets
from nnlab.workspace import WorkspaceError

MODES = {"One method": N_("One method"), "Pipeline": N_("Pipeline")}
SENS_KINDS = {"prune": N_("pruning (sparsity)"), "quantize": N_("quantization (bits)"),
              "channels": N_("channel pruning per dependency group (share of channels)")}
SENS_AXES = {"prune": N_("sparsity"), "channels": N_("share of channels removed"), "quantize": N_("bits")}
# the variants table: the frame keeps these (English) names, the header shows their translation
VARIANT_COLUMNS = (N_("id"), N_("name"), N_("method"), N_("accuracy"), N_("Δ points"), N_("size (KiB)"),
                   N_("× smaller"), N_("weight sparsity"), N_("latency b1 (ms)"), N_("format"), N_("seconds"),
                   N_("parent"))
SUGGEST_COLUMNS = (N_("layer"), N_("suggested level"), N_("drop at that level (points)"))
# why a run ended badly, per status (the job's label, then its error)
ENDED = {jobs.FAILED: N_("{label} failed: {error}"), jobs.INTERRUPTED: N_("{label} interrupted: {error}")}

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("nnlab · Compression lab"))
cur = session.current()
ws = session.workspace()
st.session_state.setdefault("lab_jobs", [])
st.session_state.setdefault("lab_steps", [])
owner = session.owner()
variants = ws.list_variants()

st.caption(_("Model **{name}** (`{id}`) on **{data}**: accuracy {acc}, {kib} KiB. Runs happen in the background: "
             "the page stays usable and other sessions are not blocked.").format(
    name=cur.record.name, id=cur.model_id, data=cur.data.name, acc=num(cur.record.accuracy, ".2%"),
    kib=num(cur.record.size_bytes / 1024, ".0f")))
if compression.IMPORT_ERRORS:
    st.caption(_("Not available: {what}").format(
        what="; ".join(f"{k} ({v})" for k, v in compression.IMPORT_ERRORS.items())))

methods = list_methods()
if not methods:
    st.error(_("No compression method is registered (the compression engine failed to import)."))
    st.stop()


def param_widgets(cls: type, prefix: str) -> dict:
    """One widget per config field, with its one-line help and formula; returns the values."""
    values = {}
    over = defaults.overrides(cls.method, len(cur.data.y_train))  # first-click settings (compression.defaults)
    for fi in cls.fields_info():
        key, label = f"{prefix}_{fi.name}", fi.name.replace("_", " ")  # the config's field name: an identifier
        default = over.get(fi.name, fi.default)
        fhelp = _(fi.help)  # marked with N_() where the config declares it
        tip = fhelp + (_(" — formula: {formula}").format(formula=fi.formula) if fi.formula else "")
        preset = key in st.session_state  # set by a callback (e.g. the sensitivity suggestion)
        if fi.type == "bool":
            values[fi.name] = st.checkbox(label, **({} if preset else {"value": bool(default)}), key=key, help=tip)
        elif fi.choices:
            opts = list(fi.choices)
            idx = {} if preset else {"index": opts.index(default) if default in opts else 0}
            values[fi.name] = st.selectbox(label, opts, **idx, key=key, help=tip)
        elif fi.type == "int":
            values[fi.name] = st.number_input(label, **({} if preset else {"value": int(default)}), step=1, key=key,
                                              help=tip, min_value=None if fi.min is None else int(fi.min),
                                              max_value=None if fi.max is None else int(fi.max))
        elif fi.type == "float":
            lo, hi = fi.min, fi.max
            wide = lo is not None and hi is not None and lo > 0 and hi / lo >= 1000
            step = float(default) / 2 if wide and default else (0.05 if hi is not None and hi <= 1 else 0.1)
            values[fi.name] = st.number_input(label, **({} if preset else {"value": float(default)}), step=step,
                                              key=key, help=tip, min_value=None if lo is None else float(lo),
                                              max_value=None if hi is None else float(hi),
                                              format="%.1e" if wide else "%.3f")
        else:
            shown = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
            values[fi.name] = st.text_input(label, **({} if preset else {"value": shown}), key=key, help=tip)
        st.caption(fhelp + (f" · ${fi.formula}$" if fi.formula else ""))
    return values


def build(method: str, values: dict):
    try:
        return get_method(method).from_dict(values), None
    except (ValueError, TypeError) as exc:
        return None, str(exc)


def start(configs: list, name: str) -> None:
    """Submit the variant job (the same pipeline on the same model is one shared job)."""
    params = {"model_id": cur.model_id, "data": cur.data_ref, "configs": [c.to_dict() for c in configs],
              "name": name or ""}
    job = jobs.submit("variant", params, owner=owner)
    if job.status == jobs.DONE and ws.load_variant((job.result or {}).get("variant_id", "")) is None:
        job = jobs.submit("variant", params, owner=owner, rerun=True)  # the earlier result was deleted
    if job.key in st.session_state["lab_jobs"]:
        st.session_state["lab_jobs"].remove(job.key)
    st.session_state["lab_jobs"].append(job.key)


def step_line(i: int, step: dict) -> str:
    """A pipeline step as the editor lists it: its number, method id and settings (identifiers, not words)."""
    shown = ", ".join(f"{k}={v}" for k, v in step.items() if k != "method")
    return f"**{i + 1}. {step['method']}** <small>{shown}</small>"


def variant_line(rec) -> str:
    return f"{rec.name} · {num(rec.accuracy, '.2%')} · {num(rec.size_bytes / 1024, '.0f')} KiB"


left, right = st.columns([2, 3], gap="large")
with left:
    st.subheader(_("Method"))
    mode = st.radio(_("Build"), list(MODES), key="lab_mode", horizontal=True, format_func=lambda k: _(MODES[k]),
                    help=_("A pipeline applies its steps in order, each to the previous step's model."))
    by_key = {c.method: c for c in methods}
    method = st.selectbox(_("Method"), list(by_key), key="lab_method",
                          format_func=lambda k: f"{_(by_key[k].family)} · {_(by_key[k].label)}")
    cls = by_key[method]
    if cls.description:
        st.caption(_(cls.description))
    if defaults.promise(method):
        st.caption(defaults.promise(method))
    values = param_widgets(cls, f"lab_{method}")
    cfg, problem = build(method, values)
    if problem:
        st.error(problem)
    name = st.text_input(_("Variant name (optional)"), key="lab_name", max_chars=120)
    if mode == "One method":
        if st.button(_("Run"), key="lab_run", type="primary", disabled=cfg is None):
            start([cfg], name)
    else:
        if st.button(_("Add step"), key="lab_add", disabled=cfg is None):
            st.session_state["lab_steps"].append(cfg.to_dict())
        steps = st.session_state["lab_steps"]
        if not steps:
            st.info(_("The pipeline is empty: set a method above and press *Add step*."))
        for i, step in enumerate(list(steps)):
            c1, c2, c3, c4 = st.columns([6, 1, 1, 1])
            c1.markdown(step_line(i, step), unsafe_allow_html=True)
            if c2.button("", icon=":material/arrow_upward:", key=f"lab_up_{i}", disabled=i == 0, help=_("Move up")):
                steps[i - 1], steps[i] = steps[i], steps[i - 1]
                st.rerun()
            if c3.button("", icon=":material/arrow_downward:", key=f"lab_down_{i}", disabled=i == len(steps) - 1,
                         help=_("Move down")):
                steps[i + 1], steps[i] = steps[i], steps[i + 1]
                st.rerun()
            if c4.button("", icon=":material/close:", key=f"lab_rm_{i}", help=_("Remove")):
                steps.pop(i)
                st.rerun()
        if st.button(_("Run pipeline ({n} steps)").format(n=len(steps)), key="lab_run_pipeline", type="primary",
                     disabled=not steps):
            try:
                from compression.registry import config_from_dict

                start([config_from_dict(s) for s in steps], name)
            except ValueError as exc:
                st.error(_("The pipeline is invalid: {error}").format(error=exc))

with right:
    mine = [j for j in (jobs.get(i) for i in st.session_state["lab_jobs"]) if j is not None]
    polling = any(j.active for j in mine)
    # jobs whose end this full run already shows; a fragment rerun that sees another one reruns the page
    st.session_state["lab_seen"] = {j.key for j in mine if not j.active}

    @st.fragment(run_every=1 if polling else None)
    def progress_panel() -> None:
        session.apply_language()  # a fragment's own rerun runs in a new thread, without app.py: set it again
        shown = [j for j in (jobs.get(i) for i in st.session_state["lab_jobs"]) if j is not None][-4:]
        if not shown:
            return
        st.subheader(_("Runs"))
        for job in reversed(shown):
            s = job.snapshot()
            if job.active:
                st.progress(s["fraction"], text=f"{s['label']}: {session.progress_text(s)}")
                st.button(_("Cancel"), key=f"lab_cancel_{job.key}", on_click=job.cancel,
                          disabled=s["cancel_requested"])
            elif job.status == jobs.DONE:
                r = job.result or {}
                made = next((v for v in variants if v.id == r.get("variant_id")), None)
                if made is not None:  # the runtime that runs it, and how nnlab chose it (every candidate's figures)
                    runtime = f"; {runtime_note(made)}"
                else:
                    runtime = _(", runs in {runtime}").format(runtime=r["runtime"]) if r.get("runtime") else ""
                st.success(_("Done in {seconds} s: **{name}** — accuracy {acc}, {kib} KiB, weight sparsity "
                             "{sparsity}{runtime}").format(
                    seconds=num(s["elapsed"], ".1f"), name=r.get("name", ""),
                    acc=num(float(r.get("accuracy", float("nan"))), ".2%"),
                    kib=num(r.get("size_bytes", 0) / 1024, ".0f"),
                    sparsity=num(float(r.get("weight_sparsity", 0.0)), ".1%"), runtime=runtime))
            elif job.status == jobs.CANCELLED:
                st.warning(_("{label}: cancelled; nothing was stored.").format(label=s["label"]))
            else:
                ended = ENDED.get(job.status)
                st.error(_(ended).format(label=s["label"], error=s["error"]) if ended
                         else f"{s['label']} {job.status}: {s['error']}")
                if job.detail:
                    with st.expander(_("Details")):
                        st.code(job.detail)
        if any(not j.active and j.key not in st.session_state["lab_seen"] for j in shown):
            st.rerun(scope="app")  # the new variant appears in the list at once; polling stops

    progress_panel()

    st.subheader(_("Variants"))
    st.page_link("pages/compress_diagnose.py", label=_("Diagnose a variant: which layer lost the accuracy"),
                 icon=":material/troubleshoot:")
    here = [v for v in variants if v.dataset == cur.data.id]
    if ws.errors:
        st.warning(_("Some variants could not be read: {errors}").format(errors="; ".join(ws.errors)))
    if not here:
        st.info(_("No variant yet for this dataset: run a method."))
    else:
        base_size = cur.record.size_bytes
        table = pd.DataFrame([dict(zip(VARIANT_COLUMNS, (
            v.id, v.name, v.method, v.accuracy, 100 * (v.accuracy - cur.record.accuracy), v.size_bytes / 1024,
            base_size / v.size_bytes if v.size_bytes and base_size else None, weight_sparsity(v), v.latency_ms(1),
            v.artifact_format, v.extra.get("seconds"), v.parent))) for v in reversed(here)])
        st.dataframe(table, hide_index=True, width="stretch", key="lab_variants_table",
                     column_config=columns.labels(table.columns, {
                         "accuracy": st.column_config.NumberColumn(format="percent"),
                         "weight sparsity": st.column_config.NumberColumn(format="percent")}))
        ids = [v.id for v in reversed(here)]
        names = {v.id: variant_line(v) for v in here}
        pick = st.selectbox(_("Variant"), ids, key="lab_variant", format_func=lambda i: names.get(i, i))
        rec = next(v for v in here if v.id == pick)
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        new_name = c1.text_input(_("New name"), value=rec.name, key=f"lab_rename_to_{pick}", max_chars=120)
        if c2.button(_("Rename"), key="lab_rename"):
            try:
                ws.rename_variant(pick, new_name)
                st.rerun()
            except WorkspaceError as exc:
                st.error(str(exc))
        d1, d2 = st.columns([3, 1], vertical_alignment="bottom")
        sure = d1.checkbox(_("Yes, delete this variant and its artifact"), key="lab_delete_confirm")
        if d2.button(_("Delete"), key="lab_delete", disabled=not sure):
            ws.delete_variant(pick)
            st.session_state.pop("lab_delete_confirm", None)
            st.rerun()
        e1, e2, e3 = st.columns(3)
        try:
            blob, fname = export.artifact_bytes(ws, rec)
            e1.download_button(_("Artifact ({format})").format(format=rec.artifact_format), blob, file_name=fname,
                               key="lab_dl_artifact")
        except export.ExportError as exc:
            e1.caption(str(exc))
        e2.download_button(_("Record (JSON)"), export.record_json(rec), file_name=f"{rec.id}.json",
                           mime="application/json", key="lab_dl_record")
        if not rec.artifact_format.endswith("-int8"):  # runtime artifacts have no PyTorch state dict
            def _state() -> bytes:
                from compression.variant import load_variant_model

                return export.state_dict_bytes(load_variant_model(ws, rec))

            e3.download_button(_("State dict (safetensors)"), _state, file_name=f"{rec.id}.safetensors",
                               key="lab_dl_state")

st.divider()
with st.expander(_("Sensitivity analysis: one layer at a time"), expanded=False):
    try:
        from compression import sensitivity
    except Exception as exc:  # noqa: BLE001 - the analysis module is optional
        st.info(_("Sensitivity analysis is not available: {error}").format(error=exc))
    else:
        kinds = list(sensitivity.TRANSFORMS)
        s1, s2, s3 = st.columns(3)
        kind = s1.radio(_("Compress each layer by"), kinds, key="lab_sens_kind", horizontal=True,
                        format_func=lambda k: _(SENS_KINDS[k]) if k in SENS_KINDS else k)
        samples = s2.number_input(_("Validation samples"), 100, 5000, 500, step=100, key="lab_sens_samples",
                                  help=_("Held-out training samples scored at each point (the test split stays "
                                         "unseen)."))
        sens_params = {"model_id": cur.model_id, "data": cur.data_ref, "kind": kind, "samples": int(samples)}
        run_key = compression.tasks.sensitivity_key(cur.model_id, kind, int(samples))
        if s3.button(_("Run analysis"), key="lab_sens_run"):
            st.session_state["lab_sens_job"] = jobs.submit("sensitivity", sens_params, owner=owner,
                                                           rerun=ws.load_run(run_key) is None).key
        sjob = jobs.get(st.session_state.get("lab_sens_job", "")) or jobs.find("sensitivity", sens_params)
        sens_polling = sjob is not None and sjob.active

        @st.fragment(run_every=1 if sens_polling else None)
        def sens_progress() -> None:
            session.apply_language()  # a fragment's own rerun: see progress_panel
            j = jobs.get(st.session_state.get("lab_sens_job", "")) or jobs.find("sensitivity", sens_params)
            if j is None:
                return
            if j.active:
                s = j.snapshot()
                st.progress(s["fraction"], text=session.progress_text(s))
                st.button(_("Cancel analysis"), key="lab_sens_cancel", on_click=j.cancel)
            elif j.status in (jobs.FAILED, jobs.INTERRUPTED):
                st.error(_(ENDED[j.status]).format(label=_("The analysis"), error=j.error))
            if sens_polling and not j.active:
                st.rerun(scope="app")

        sens_progress()
        saved = ws.load_run(run_key)
        if saved:
            table = sensitivity.SensitivityTable(saved["kind"], saved["base_accuracy"], saved["rows"],
                                                 saved.get("split", "validation"))
            fig = go.Figure()
            for layer in table.layers():
                pts = [r for r in table.rows if r["layer"] == layer]
                fig.add_trace(go.Scatter(x=[r["level"] for r in pts], y=[r["accuracy"] for r in pts],
                                         mode="lines+markers", name=layer))
            fig.add_hline(y=table.base_accuracy, line_dash="dot", annotation_text=_("untouched"))
            fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10), yaxis_tickformat=".0%",
                              xaxis_title=_(SENS_AXES.get(table.kind, "bits")),
                              yaxis_title=_("accuracy"), separators=i18n.plotly_separators())
            if table.kind == "quantize":  # fewer bits is more compression: to the right, like the pruning levels
                fig.update_xaxes(autorange="reversed")
            widgets.chart(fig, key="lab_sens_fig")
            budget = st.number_input(_("Accuracy-drop budget for all layers together (points)"), 0.0, 50.0, 1.0,
                                     step=0.5, key="lab_sens_budget")
            sug = sensitivity.suggest_levels(table, budget / 100)
            drops = {(r["layer"], r["level"]): r["drop"] for r in table.rows}
            suggest = pd.DataFrame([dict(zip(SUGGEST_COLUMNS, (k, v, None if v is None else 100 * drops[(k, v)])))
                                    for k, v in sug.items()], columns=list(SUGGEST_COLUMNS))
            st.dataframe(suggest, hide_index=True, key="lab_sens_suggest",
                         column_config=columns.labels(suggest.columns))
            suggested = sensitivity.suggested_config(table, sug)
            if suggested and suggested["method"] in compression.METHODS:
                m = suggested["method"]
                untouched = _(sensitivity.LAB_METHODS[table.kind][2])
                none_safe = [k for k, v in sug.items() if v is None]
                if len(none_safe) == len(sug):
                    st.caption(_("No layer stays within its share of the budget at any level tried: raise the "
                                 "budget."))
                else:
                    left = ""
                    if none_safe:
                        left = (_("No level of {layers} stays within its share: it is left untouched ({untouched}).")
                                if len(none_safe) == 1 else
                                _("No level of {layers} stays within its share: they are left untouched "
                                  "({untouched}).")).format(layers=", ".join(none_safe), untouched=untouched)
                    st.caption(_("Each layer gets its own suggested level in {method}'s per-layer field (the budget "
                                 "is split evenly across the {n} layers). ").format(method=m, n=len(sug)) + left)

                    def use(m: str = m, suggested: dict = suggested) -> None:
                        st.session_state["lab_method"] = m
                        st.session_state["lab_mode"] = "One method"
                        for name, value in suggested.items():
                            if name != "method":
                                st.session_state[f"lab_{m}_{name}"] = value

                    st.button(_("Use these per-layer levels in the method editor ({method})").format(method=m),
                              key="lab_sens_apply", on_click=use)
