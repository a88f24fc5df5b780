"""Side by side: two or more models (the base included) — metrics, layers, classes, changed predictions."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import compression.tasks  # noqa: F401 - registers the compression job kinds
from compression import compare, export
from compression.variant import load_variant_model
from diagnostics.activations import activation_histogram
from nnlab import i18n
from nnlab.data.viz import as_image, display_scale
from nnlab.evaluate import EvalResult
from nnlab.i18n import _, num
from nnlab.jobs.kinds import eval_key, load_evaluation
from nnlab.ui import columns, session, widgets

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("nnlab · Side by side"))
cur = session.current()
ws = session.workspace()
data = cur.data


@st.cache_resource(max_entries=8, show_spinner=False)
def _variant_model(root: str, record_id: str, created: float, _rec):
    return load_variant_model(ws, _rec)


@st.cache_data(max_entries=16, show_spinner=False)
def _stored_eval(root: str, record_id: str, dataset_id: str, stamp: float) -> EvalResult | None:
    return load_evaluation(ws, record_id, dataset_id, "test")


def _variant_eval(rec) -> EvalResult:
    """The variant's stored test-split predictions (one evaluation job the first time, shared by sessions)."""
    path = ws.result_path(eval_key(rec.id, data.id, "test"))
    if not path.is_file():
        session.run_job("evaluate-variant", {"variant_id": rec.id, "data": cur.data_ref, "split": "test"},
                        title=_("Evaluating **{name}** on the test split…").format(name=rec.name),
                        what=_("The variant's evaluation"))
    res = _stored_eval(str(ws.root), rec.id, data.id, path.stat().st_mtime) if path.is_file() else None
    if res is None:
        st.error(_("The predictions of {name} cannot be read.").format(name=rec.name))
        st.stop()
    return res


@st.cache_data(max_entries=32, show_spinner=False)
def _activation_hist(root: str, record_id: str, created: float, layer: str, dataset_id: str, _model, _data):
    return activation_histogram(_model, _data, layer)


variants = [v for v in ws.list_variants() if v.dataset == data.id and v.status == "ok"]
records = {cur.record.id: cur.record, **{v.id: v for v in variants}}
if len(records) == 1:
    st.info(_("No variant of this dataset yet: make one in the Compression lab."))
    st.stop()
wanted = [i for i in st.session_state.get("compare_ids", []) if i in records]
if len(wanted) < 2:
    wanted = ([cur.record.id] + [i for i in wanted if i != cur.record.id] + [variants[-1].id])[:2]
    wanted = list(dict.fromkeys(wanted))
if "compare_pick" not in st.session_state or st.session_state.get("compare_from") != st.session_state.get(
        "compare_ids"):
    st.session_state["compare_pick"] = wanted  # a new selection from the Pareto page
    st.session_state["compare_from"] = st.session_state.get("compare_ids")
st.session_state["compare_pick"] = [i for i in st.session_state["compare_pick"] if i in records]


def _label(i: str) -> str:
    return f"{records[i].name} ({_('base') if i == cur.record.id else records[i].method})"


pick = st.multiselect(_("Models (the first is the reference)"), list(records), key="compare_pick",
                      format_func=_label)
if len(pick) < 2:
    st.warning(_("Pick at least two models."))
    st.stop()
chosen = [records[i] for i in pick]
models, evals = [], []
try:
    for r in chosen:
        if r.id == cur.record.id:
            models.append(cur.model)
            evals.append(session.evaluation("test", cur))
        else:
            with st.spinner(_("Loading the variant…")):
                m = _variant_model(str(ws.root), r.id, r.created, r)
            models.append(m)
            evals.append(_variant_eval(r))
except (OSError, ValueError, RuntimeError) as exc:
    st.error(_("A variant cannot be loaded: {error}").format(error=exc))
    st.stop()
ref, ref_ev = chosen[0], evals[0]

st.subheader(_("Metrics"))
table = compare.comparison_table(chosen, evals, cur.record)
st.caption(_("Speed-ups are the base's latency ÷ the model's: **same runtime** times the variant and the base (as "
             "fp32 in the variant's runtime) in one interleaved run; **vs base's fastest fp32** divides by the base's "
             "fastest fp32 runtime (a separate run, same harness) — what compression gains over the best float "
             "deployment. A model timed by an older harness shows no latency until it is measured again (Pareto "
             "page)."))
ratio = st.column_config.NumberColumn(format="%.2f×")
st.dataframe(table, hide_index=True, width="stretch", key="compare_table",
             column_config=columns.labels(table.columns, {
                 "name": st.column_config.TextColumn(pinned=True),
                 "accuracy": st.column_config.NumberColumn(format="percent"),
                 "sparsity": st.column_config.NumberColumn(format="percent"),
                 "weight sparsity": st.column_config.NumberColumn(format="percent"),
                 "agreement with ref": st.column_config.NumberColumn(format="percent"),
                 compare.SPEEDUP_SAME: ratio, compare.SPEEDUP_FASTEST: ratio, compare.SPEEDUP_SAME_32: ratio,
                 "speed-up b32 vs base's fastest fp32 (×)": ratio,
                 "size ÷ ref": st.column_config.NumberColumn(format="%.3f"),
                 "MACs ÷ ref": st.column_config.NumberColumn(format="%.3f")}))
cols = st.columns(len(chosen) - 1)
for col, r, ev in zip(cols, chosen[1:], evals[1:]):
    br = compare.change_breakdown(ref_ev, ev)
    col.metric(_("Changed predictions · {name}").format(name=r.name), br["changed"],
               help=_("fixed {fixed}, broken {broken}, wrong→wrong {ww}").format(
                   fixed=br["fixed"], broken=br["broken"], ww=br["wrong→wrong"]))
    col.metric(_("Agreement · {name}").format(name=r.name), num(compare.agreement(ref_ev, ev), ".2%"))
st.download_button(_("Comparison (CSV)"), compare.comparison_csv(chosen, evals, cur.record), file_name="comparison.csv",
                   mime="text/csv", key="compare_dl_csv")

st.page_link("pages/compress_diagnose.py", label=_("Diagnose a variant: which layer lost the accuracy, put layers "
                                                    "back, what several variants forgot"),
             icon=":material/troubleshoot:")

st.subheader(_("Per layer: sparsity, bit-width, clusters, channels"))
layer_table = compare.layer_details(chosen)
st.dataframe(layer_table, hide_index=True, width="stretch", key="compare_layers",
             column_config=columns.labels(layer_table.columns))

st.subheader(_("Per class"))
diffs = {r.name: compare.per_class_difference(ref_ev, ev, data.num_classes) for r, ev in zip(chosen[1:], evals[1:])}
fig = compare.per_class_figure(diffs, data.classes, ref.name)
fig.update_layout(separators=i18n.plotly_separators())
widgets.chart(fig, key="compare_per_class")
names = {r.id: r.name for r in chosen}
target_id = st.selectbox(_("Compare the reference with"), pick[1:], key="compare_target",
                         format_func=lambda i: names[i])
k = pick.index(target_id)
other, other_ev = chosen[k], evals[k]
fig = compare.confusion_difference_figure(compare.confusion_difference(ref_ev, other_ev, data.num_classes),
                                          data.classes, _("Confusion of {name} minus {ref}").format(
                                              name=other.name, ref=ref.name))
fig.update_layout(separators=i18n.plotly_separators())
widgets.chart(fig, key="compare_confusion")

st.subheader(_("Samples whose prediction changed"))
items = compare.changed_samples(ref_ev, other_ev)
st.caption(_("{n} test samples change their predicted class between **{ref}** and **{other}** (broken ones — right "
             "before, wrong after — first).").format(n=len(items), ref=ref.name, other=other.name))
if items:
    # a slider needs two distinct ends: with one changed sample there is nothing to choose
    limit = (st.slider(_("Show"), 1, min(60, len(items)), min(18, len(items)), key="compare_gallery_n")
             if len(items) > 1 else len(items))
    scale = display_scale(data.input_shape[1], 72)
    ncol = 6
    for row in range(0, limit, ncol):
        cs = st.columns(ncol)
        for c, it in zip(cs, items[row:row + ncol]):
            c.image(as_image(data.x_test[it["index"]], scale),
                    caption=_("#{index} · true {label}\n{a} ({conf_a}) → {b} ({conf_b})").format(
                        index=it["index"], label=data.classes[it["label"]], a=data.classes[it["pred_a"]],
                        conf_a=num(it["conf_a"], ".0%"), b=data.classes[it["pred_b"]],
                        conf_b=num(it["conf_b"], ".0%")))
    st.download_button(_("Changed sample indices (CSV)"), pd.DataFrame(items).to_csv(index=False),
                       file_name="changed.csv", mime="text/csv", key="compare_dl_changed")

st.subheader(_("Weights and activations"))
torch_models = [(r, m) for r, m in zip(chosen, models) if not compare.runs_outside_pytorch(m)]
skipped = [r.name for r, m in zip(chosen, models) if compare.runs_outside_pytorch(m)]
if skipped:
    st.caption(_("Runs in ONNX Runtime (its weights and activations are not PyTorch tensors): {names}").format(
        names=", ".join(skipped)))
if torch_models:
    layers = [n for n in compare.weighted_layers(torch_models[0][1])
              if all(n in dict(m.named_modules()) for _, m in torch_models)]
    if layers:
        h1, h2 = st.columns(2)
        layer = h1.selectbox(_("Layer"), layers, key="compare_layer")
        log_y = h2.checkbox(_("Log counts"), key="compare_log", value=True)
        w1, w2 = st.columns(2)
        fig = compare.histogram_figure({r.name: compare.weight_values(m, layer) for r, m in torch_models},
                                       _("Weights of {layer}").format(layer=layer), log_y=log_y)
        fig.update_layout(separators=i18n.plotly_separators())
        widgets.chart(fig, key="compare_weights", where=w1)
        hists = {}
        for r, m in torch_models:
            h = _activation_hist(str(ws.root), r.id, r.created, layer, data.id, m, data)
            if h is not None:
                hists[r.name] = h
        fig = compare.binned_figure(hists, _("Outputs of {layer} (256 test images)").format(layer=layer), log_y=log_y)
        fig.update_layout(separators=i18n.plotly_separators())
        widgets.chart(fig, key="compare_activations", where=w2)
    else:
        st.caption(_("The chosen models share no Conv/Linear layer name."))

st.subheader(_("Downloads"))
dl = st.selectbox(_("Model"), pick, key="compare_dl_pick", format_func=lambda i: names[i])
rec = records[dl]
m = models[pick.index(dl)]
e1, e2, e3, e4 = st.columns(4)
e1.download_button(_("Record (JSON)"), export.record_json(rec), file_name=f"{rec.id}.json", mime="application/json",
                   key="compare_dl_record")
try:
    blob, fname = export.artifact_bytes(ws, rec)
    e2.download_button(_("Artifact ({format})").format(format=rec.artifact_format), blob, file_name=fname,
                       key="compare_dl_artifact")
except export.ExportError as exc:
    e2.caption(str(exc))
if not compare.runs_outside_pytorch(m):
    e3.download_button(_("ONNX (float)"), lambda: export.onnx_bytes(m, data.input_shape), file_name=f"{rec.id}.onnx",
                       key="compare_dl_onnx")
    e4.download_button(_("State dict (safetensors)"), lambda: export.state_dict_bytes(m),
                       file_name=f"{rec.id}.safetensors", key="compare_dl_state")

st.subheader(_("Report"))
st.caption(_("The model card, diagnosis, per-class metrics, worst errors with attributions, data checks and these "
             "models side by side, in one self-contained file."))
session.report_panel(cur, [r.id for r in chosen if r.id != cur.record.id], key="compare_report")
