"""Diagnose a variant: which layer lost the accuracy, what putting it back recovers, which samples flipped,
and what several variants forgot (PIEs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

import compression.tasks  # noqa: F401 - registers the compression job kinds (the variant's evaluation)
import diagnostics.tasks as dtasks
from diagnostics import variantdiff
from nnlab.data.viz import as_image, display_scale
from nnlab.i18n import _, num
from nnlab.jobs.kinds import eval_key, load_evaluation
from nnlab.ui import session, widgets

ATTRIBUTIONS = ("integrated_gradients", "gradcam")  # method ids of diagnostics.attributions

session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("nnlab · Diagnose a variant"))
cur = session.current()
ws = session.workspace()
data = cur.data
variants = [v for v in ws.list_variants() if v.parent == cur.model_id and v.status == "ok"]
if not variants:
    st.info(_("No variant of this model yet: make one in the Compression lab."))
    st.stop()
by_id = {v.id: v for v in variants}
wanted = next((i for i in st.session_state.get("compare_ids", []) if i in by_id), variants[-1].id)
st.session_state.setdefault("diag_variant", wanted)
if st.session_state["diag_variant"] not in by_id:
    st.session_state["diag_variant"] = wanted
vid = st.selectbox(_("Variant"), list(by_id), key="diag_variant", format_func=lambda i: f"{by_id[i].name} ({i})")
rec = by_id[vid]


def _variant_eval(r):
    path = ws.result_path(eval_key(r.id, data.id, "test"))
    if not path.is_file():
        session.run_job("evaluate-variant", {"variant_id": r.id, "data": cur.data_ref, "split": "test"},
                        title=_("Evaluating **{name}** on the test split…").format(name=r.name),
                        what=_("The variant's evaluation"))
    res = load_evaluation(ws, r.id, data.id, "test")
    if res is None:
        st.error(_("The predictions of {name} cannot be read.").format(name=r.name))
        st.stop()
    return res


base_ev, var_ev = session.evaluation("test", cur), _variant_eval(rec)
fl = variantdiff.flips(base_ev.preds, var_ev.preds, base_ev.labels, data.num_classes)
c1, c2, c3, c4 = st.columns(4)
c1.metric(_("Accuracy, base → variant"), num(100 * fl.variant_accuracy, ".2f") + " %",
          _("{delta} pt").format(delta=num(100 * (fl.variant_accuracy - fl.base_accuracy), "+.2f")))
c2.metric(_("Changed predictions"), fl.changed, help=_("Flips count even when accuracy does not move."))
c3.metric(_("Right → wrong"), fl.right_to_wrong)
c4.metric(_("Wrong → right"), fl.wrong_to_right)
if rec.extra.get("restored_layers") is not None:  # a repair: the layers it put back
    st.caption(_("This variant is a repair of {source}: layers put back: {layers}.").format(
        source=rec.extra.get("from_variant", ""), layers=", ".join(rec.extra["restored_layers"]) or _("none")))

st.subheader(_("Which layer lost the accuracy"))
samples = int(st.number_input(_("Test images for the per-layer error"), 16, 4096, 256, step=16, key="diag_samples"))
params = {"model_id": cur.model_id, "data": cur.data_ref, "variant_id": rec.id, "samples": samples, "top_k": 5}
key = dtasks.variant_diagnosis_key(cur.model_id, rec.id, data.id, min(samples, len(data.labels("test"))))
res = ws.load_run(key)
if res is None:
    session.run_job("variant-diagnosis", params, title=_("Per-layer error of **{name}**…").format(name=rec.name),
                    what=_("The per-layer error"))
    res = ws.load_run(key) or {}
if res.get("note"):
    st.info(res["note"])
errors = pd.DataFrame(res.get("errors", []))
runtime_int8 = rec.artifact_format in ("onnx-int8", "openvino-ir-int8")
if len(errors):
    st.caption(_("*Local*: the variant's layer fed the base's input to that layer (what compressing this layer costs "
                 "by itself). *Accumulated*: both networks fed the same images, compared at this layer's output. "
                 "Relative L2 error and SQNR over {n} test images.").format(n=res["samples"]))
    if runtime_int8:
        st.caption(_("Measured from {runtime}'s own intermediate outputs against the float model run the same way "
                     "(ONNX Runtime: the local error is simulated with the int8 graph's weights and input scales, "
                     "within 2 % of the runtime on the first layer).").format(runtime=res.get("runtime", "")))
    fig = go.Figure([go.Scatter(x=errors["name"], y=errors["local_rel"], mode="lines+markers", name=_("local")),
                     go.Scatter(x=errors["name"], y=errors["accumulated_rel"], mode="lines+markers",
                                name=_("accumulated"))])
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), yaxis_title=_("relative error"),
                      xaxis_title=_("layer (forward order)"), title=_("Error over depth"))
    widgets.chart(fig, key="diag_depth")
    root = _("model")
    colour = "local_rel" if errors["local_rel"].notna().any() else "accumulated_rel"
    tree = errors.assign(parent=errors["name"].str.rpartition(".")[0].replace("", root))
    tree_fig = px.treemap(tree, path=[px.Constant(root), "parent", "name"],
                          color=colour, color_continuous_scale="Reds", hover_data=["type", "local_sqnr_db"])
    tree_fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10),
                           title=_("The network, coloured by local error") if colour == "local_rel"
                           else _("The network, coloured by accumulated error"))
    widgets.chart(tree_fig, key="diag_tree")
    st.dataframe(errors, hide_index=True, width="stretch", key="diag_errors")
    st.subheader(_("Put one layer back"))
    st.caption((_("Accuracy on the same {n} images with only that layer left in float: the base re-quantized by the "
                  "runtime with that layer excluded (base {base} %, variant {variant} %).") if runtime_int8 else
                _("Accuracy on the same {n} images with only that layer restored to the base's float module (base "
                  "{base} %, variant {variant} %).")).format(
        n=res["samples"], base=num(100 * res["base_accuracy"], ".2f"), variant=num(100 * res["variant_accuracy"], ".2f")))
    st.dataframe(pd.DataFrame(res.get("recovery", [])), hide_index=True, width="stretch", key="diag_recovery",
                 column_config={"accuracy": st.column_config.NumberColumn(format="percent"),
                                "agreement": st.column_config.NumberColumn(format="percent"),
                                "recovered": st.column_config.NumberColumn(format="percent")})

    st.subheader(_("Put layers back until the drop is within a budget"))
    r1, r2 = st.columns([1, 3])
    budget = r1.number_input(_("Largest drop (points)"), 0.0, 50.0, 0.5, step=0.1, key="diag_budget")
    if runtime_int8:
        r2.caption(_("Ranks the layers by their own error in {runtime}, re-quantizes the base with the worst of them "
                     "left in float, one more at a time, until the drop on 512 test images is within the budget "
                     "(ONNX Runtime: nodes_to_exclude; OpenVINO: NNCF's ignored scope), and stores the result as a "
                     "new variant, measured like any other (it appears on the Pareto plot with its latency cost; the "
                     "layers left in float are in its record).").format(runtime=res.get("runtime", "")))
    else:
        r2.caption(_("Ranks the layers by what putting each back recovers, puts them back in that order until the "
                     "drop on 512 test images is within the budget, and stores the result as a new variant, measured "
                     "like any other (it appears on the Pareto plot with its latency cost; the restored layers are in "
                     "its record)."))
    if st.button(_("Repair"), key="diag_repair", type="primary"):
        job = session.run_job("variant-repair", {"model_id": cur.model_id, "data": cur.data_ref, "variant_id": rec.id,
                                                 "budget": budget / 100, "samples": 512},
                              title=_("Repairing **{name}**…").format(name=rec.name), what=_("The repair"),
                              retry=True)
        out = job.result or {}
        back = out.get("restored_layers", [])
        st.success(_("New variant {id}: {count} layer(s) put back ({layers}), test accuracy {acc} %.").format(
            id=out.get("variant_id"), count=len(back), layers=", ".join(back) or _("none needed"),
            acc=num(100 * out.get("accuracy", float("nan")), ".2f")))
        st.page_link("pages/compress_pareto.py", label=_("See it on the Pareto plot"), icon=":material/scatter_plot:")

st.subheader(_("Samples whose prediction changed"))
if fl.changed:
    m = pd.DataFrame(fl.matrix, index=[_("base: {cls}").format(cls=c) for c in data.classes],
                     columns=[_("variant: {cls}").format(cls=c) for c in data.classes])
    widgets.chart(px.imshow(m, text_auto=True, color_continuous_scale="Blues",
                            title=_("Flip matrix (changed samples)")), key="diag_flip_matrix")
    scale = display_scale(data.input_shape[1], 72)
    shown = fl.indices[:18]
    for row in range(0, len(shown), 6):
        cols = st.columns(6)
        for c, i in zip(cols, shown[row:row + 6]):
            c.image(as_image(data.x_test[int(i)], scale),
                    caption=_("#{i} · true {label}").format(i=int(i), label=data.classes[int(base_ev.labels[i])])
                    + f"\n{data.classes[int(base_ev.preds[i])]} → {data.classes[int(var_ev.preds[i])]}")
    a1, a2 = st.columns([1, 3])
    method = a1.selectbox(_("Attribution"), list(ATTRIBUTIONS), key="diag_attr_method",
                          format_func={"integrated_gradients": _("Integrated gradients"), "gradcam": "Grad-CAM"}.get)
    a2.caption(_("Base and variant explain the same class (the base's prediction); ρ is Spearman's rank correlation "
                 "of the two maps (1: the same pixels matter in the same order)."))
    if st.button(_("Attributions of the first six flipped samples"), key="diag_attr_run"):
        st.session_state["diag_attr_ask"] = True
    if st.session_state.get("diag_attr_ask"):
        idx = [int(i) for i in fl.indices[:6]]
        aparams = {"model_id": cur.model_id, "data": cur.data_ref, "variant_id": rec.id, "method": method,
                   "indices": idx}
        akey = dtasks.flip_attributions_key(cur.model_id, rec.id, data.id, method, idx)
        arr = ws.load_arrays(akey)
        if arr is None:
            session.run_job("flip-attributions", aparams, title=_("Attributions of the flipped samples…"),
                            what=_("The attributions"))
            arr = ws.load_arrays(akey) or {}
        if arr:
            from diagnostics.attributions import render

            for j, i in enumerate(arr["indices"]):
                cols = st.columns([1, 1, 1, 2])
                pic = as_image(data.x_test[int(i)])
                cols[0].image(as_image(data.x_test[int(i)], scale), caption=f"#{int(i)}")
                cols[1].image(render(arr["base"][j], pic, scale=scale), caption=_("base"))
                cols[2].image(render(arr["variant"][j], pic, scale=scale), caption=_("variant"))
                cols[3].metric(_("ρ base vs variant"), num(float(arr["similarity"][j]), ".2f"))
else:
    st.success(_("No test prediction changed."))

st.subheader(_("What several variants forgot"))
others = st.multiselect(_("Variants (at least two)"), list(by_id), default=list(by_id)[-min(5, len(by_id)):],
                        key="diag_pie_variants", format_func=lambda i: by_id[i].name)
if len(others) >= 2:
    preds = np.stack([_variant_eval(by_id[i]).preds for i in others])
    pie = variantdiff.forgotten(base_ev.preds, preds, base_ev.labels, data.num_classes,
                                base_confidence=base_ev.probs.max(1))
    p1, p2, p3 = st.columns(3)
    p1.metric(_("PIEs"), pie["count"], help=_("Samples whose modal prediction across the variants differs from the "
                                              "base's (Hooker et al. 2019)"))
    p2.metric(_("Base accuracy on PIEs / rest"), f"{num(100 * pie['base_accuracy_pie'], '.1f')} % / "
                                                 f"{num(100 * pie['base_accuracy_rest'], '.1f')} %")
    p3.metric(_("PIE rate among low-confidence base predictions"), num(100 * pie["pie_rate_low_confidence"], ".1f")
              + " %", help=_("against {rate} % overall").format(rate=num(100 * pie["pie_rate"], ".1f")))
