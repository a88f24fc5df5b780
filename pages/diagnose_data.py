"""Data checks (the lecture's list): class balance, suspected label errors, train/test mismatch, leakage.

Suspected label errors, near-duplicates and the most test-like test samples are shown as galleries of the images
as the model sees them; every number and neighbour comes from the stored report (the "data-checks" job).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from diagnostics import datacheck
from diagnostics import tasks as dtasks
from diagnostics.mismatch import class_shift, imbalance_ratio
from nnlab import i18n
from nnlab.data.viz import as_image, display_scale, grid
from nnlab.i18n import _, num
from nnlab.jobs import manager as jobs
from nnlab.ui import session, widgets

AUTO_MAX_TRAIN = 10000
PER_PAGE = 12  # label-error cards per page
NCOLS = 4


@st.cache_data(show_spinner=False, max_entries=8)
def _report(root: str, model_id: str, dataset_id: str, stamp: float):
    return dtasks.load_data_report(session.workspace(), model_id, dataset_id)


session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title(_("Data checks"))
cur = session.current()
data = cur.data
classes = data.classes

# --- class balance ---------------------------------------------------------------------------------------
st.header(_("Class balance"))
tc, sc = data.class_counts("train"), data.class_counts("test")
shift = class_shift(tc, sc)
b1, b2, b3 = st.columns(3)
ratio = imbalance_ratio(tc)
b1.metric(_("Imbalance ratio (train, largest/smallest)"), "∞" if not np.isfinite(ratio) else num(ratio, ".2f"))
b2.metric(_("Class-frequency shift train→test (TV distance)"), num(shift.tv_distance, ".3f"))
b3.metric(_("χ² p-value (test counts vs train frequencies)"), num(shift.chi2_p, ".3g"))
fig = go.Figure([go.Bar(name=widgets.split_label("train"), x=classes, y=shift.train_freq),
                 go.Bar(name=widgets.split_label("test"), x=classes, y=shift.test_freq)])
fig.update_layout(barmode="group", height=280, yaxis_title=_("share of the split"),
                  margin=dict(l=10, r=10, t=10, b=10), separators=i18n.plotly_separators())
fig.update_xaxes(type="category")
widgets.chart(fig, key="data_balance")
if tc.min() == 0:
    st.warning(_("Class(es) without training samples: {classes}.").format(
        classes=", ".join(c for c, n in zip(classes, tc) if n == 0)))

# --- the feature-based checks (a shared job; its report is stored in the workspace) ---------------------------
ws = session.workspace()
check_params = {"model_id": cur.model_id, "data": cur.data_ref}
report_path = ws.run_path(dtasks.data_checks_key(cur.model_id, data.id))
rep = _report(str(ws.root), cur.model_id, data.id, report_path.stat().st_mtime) if report_path.is_file() else None
if rep is None:
    job = jobs.find("data-checks", check_params)
    small = len(data.y_train) <= AUTO_MAX_TRAIN
    clicked = bool(st.session_state.pop("data_run_clicked", None))
    if job is not None and job.active or small or clicked:
        job = session.run_job("data-checks", check_params, retry=clicked,
                              title=_("Running the data checks (features of both splits, label errors, mismatch, "
                                      "near-duplicates)…"), what=_("The data checks"))
        st.rerun()
    elif job is not None and job.status in (jobs.FAILED, jobs.CANCELLED, jobs.INTERRUPTED):
        session.show_outcome(job, _("The data checks"))
    else:
        st.info(_("The label-error, mismatch and duplicate checks extract the model's features for all "
                  "{n} images (a background job: you may leave the page).").format(
            n=num(len(data.y_train) + len(data.y_test), ",")))
        if st.button(_("Run the data checks"), key="data_run", type="primary"):
            st.session_state["data_run_clicked"] = True
            st.rerun()

def _decisions() -> dict[int, str]:
    """This session's decisions on the suspected label errors of this model and dataset (train index → choice)."""
    return st.session_state.setdefault(f"label_decisions::{cur.model_id}::{data.id}", {})


def _record(idx: int) -> None:
    choice = st.session_state.get(f"label_dec_{idx}")
    if choice is None:
        _decisions().pop(idx, None)
    else:
        _decisions()[idx] = choice


def _decision_label(decision: str) -> str:
    """A decision as shown; its value (in the session and the CSVs) stays the English id."""
    return _(datacheck.DECISION_LABELS[decision]) if decision in datacheck.DECISION_LABELS else decision


def label_card(r: dict, decisions: dict[int, str], big: int, small: int) -> None:
    """One suspected label error: the image, both labels, the suggested class's nearest images, a decision."""
    idx = r["train_index"]
    st.image(as_image(data.x_train[idx], big), caption=_("train #{index}").format(index=idx), output_format="PNG")
    st.markdown(_("given **{given}** · suggested **{suggested}**  \n"
                  "p(given) {p_given} · p(suggested) {p_suggested}").format(
        given=r["given_class"], suggested=r["suggested_class"], p_given=num(r["self_confidence"], ".2f"),
        p_suggested=num(r["p_suggested"], ".2f")))
    if r["neighbours"]:
        st.image(grid([as_image(data.x_train[j], small) for j in r["neighbours"]], ncols=len(r["neighbours"])),
                 caption=_("nearest training images labelled {label}").format(label=r["suggested_class"]),
                 output_format="PNG")
    key = f"label_dec_{idx}"
    if key not in st.session_state and idx in decisions:  # decided on another page of the gallery
        st.session_state[key] = decisions[idx]
    st.radio(_("Your decision"), datacheck.DECISIONS, key=key, horizontal=True, on_change=_record, args=(idx,),
             format_func=_decision_label,
             **({} if key in st.session_state else {"index": None}))


def label_gallery(rep: datacheck.DataReport) -> None:
    """The suspected label errors as cards, filtered by class pair and paged; decisions download as CSV."""
    rows = datacheck.label_error_rows(rep, classes)
    pairs: dict[tuple[int, int], int] = {}
    for r in rows:
        pairs[(r["given"], r["suggested"])] = pairs.get((r["given"], r["suggested"]), 0) + 1
    options = [None, *sorted(pairs, key=lambda p: (-pairs[p], p))]
    f1, f2 = st.columns([3, 1])
    pair = f1.selectbox(_("Given label → suggested label"), options, key="label_pair",
                        format_func=lambda p: _("all pairs ({n})").format(n=num(len(rows), ",")) if p is None else
                        f"{classes[p[0]]} → {classes[p[1]]} ({num(pairs[p], ',')})")
    shown = [r for r in rows if pair is None or (r["given"], r["suggested"]) == pair]
    pages = max(1, -(-len(shown) // PER_PAGE))
    if st.session_state.get("label_page", 1) > pages:
        st.session_state["label_page"] = pages
    page = int(f2.number_input(_("Page (of {pages})").format(pages=pages), 1, pages, 1, key="label_page"))
    st.caption(_("Each card: the training image as the model sees it, its given label and the label the "
                 "out-of-sample model suggests with their probabilities (p(given) is the self-confidence), and the "
                 "nearest training images labelled with the suggested class in the model's penultimate-feature "
                 "space."))
    decisions = _decisions()
    big, small = display_scale(data.input_shape[1], 112), display_scale(data.input_shape[1], 40)
    part = shown[(page - 1) * PER_PAGE:page * PER_PAGE]
    with st.container(key="label_gallery"):
        for start in range(0, len(part), NCOLS):
            for col, r in zip(st.columns(NCOLS), part[start:start + NCOLS]):
                with col.container(border=True, key=f"label_card_{r['train_index']}"):
                    label_card(r, decisions, big, small)
    counts = {d: sum(1 for v in decisions.values() if v == d) for d in datacheck.DECISIONS}
    st.caption(_("{decided} of {total} decided: ").format(decided=num(len(decisions), ","), total=num(len(rows), ","))
               + ", ".join(f"{n} {_decision_label(d)}" for d, n in counts.items()))
    d1, d2 = st.columns(2)
    d1.download_button(_("Decisions (CSV)"), datacheck.decisions_csv(rows, decisions), mime="text/csv",
                       file_name=f"label-decisions-{data.id}.csv", key="label_dl_decisions",
                       icon=":material/download:", help=_("The samples you decided on, with both labels"),
                       on_click="ignore")
    d2.download_button(_("Relabelling (CSV)"), datacheck.relabelling_csv(rows, decisions), mime="text/csv",
                       file_name=f"relabelling-{data.id}.csv", key="label_dl_relabel", icon=":material/download:",
                       help=_("The samples you marked 'label wrong', with the suggested label to use instead"),
                       on_click="ignore")


st.header(_("Suspected label errors"))
if rep is not None:
    li = rep.labels
    st.caption(_("Confident learning (Northcutt et al. 2021) on out-of-sample probabilities: {method}. The features "
                 "were learned with these labels, so they are only partly out-of-sample; k-fold retraining below is "
                 "exact.").format(method=datacheck.shown_label_method(li.checked, li.method, len(data.y_train))))
    e_train = session.evaluation("train", cur).error
    if e_train < 0.005:
        st.warning(_("This model fits its training set almost perfectly (E_train = {e_train}): its features have "
                     "memorised the given labels, so this fast route misses most label errors (on digits with 5 % "
                     "flipped labels it found 85 % of them after 3 epochs, 27 % after 18). Use the exact k-fold "
                     "retraining below.").format(e_train=num(e_train, ".2%")))
    l1, l2 = st.columns(2)
    l1.metric(_("Suspected label errors"), num(len(li.indices), ","),
              help=_("of {n} training samples checked").format(n=num(li.checked, ",")))
    l2.metric(_("Share of the checked samples"), num(li.fraction, ".2%"))
    if not len(li.indices):
        st.success(_("No suspected label errors."))
    elif not rep.has_galleries:
        st.info(_("This report was stored by an earlier version without the gallery's neighbours and scores: run the "
                  "checks again to see the suspected errors as images."))
        if st.button(_("Run the data checks again"), key="data_rerun_old"):
            jobs.submit("data-checks", check_params, owner=session.owner(), rerun=True)
            st.rerun()
    else:
        with st.container(key="label_errors"):
            label_gallery(rep)

with st.expander(_("Exact check: k-fold retraining of the architecture (slower)")):
    n_train = len(data.y_train)
    n_max = int(st.number_input(_("Training samples to check (stratified subsample)"), min_value=min(100, n_train),
                                max_value=n_train, value=min(n_train, 2000), step=min(100, n_train),
                                key="data_retrain_n"))
    folds = int(st.number_input(_("Folds"), min_value=2, max_value=10, value=4, key="data_retrain_folds"))
    retrain_params = {"model_id": cur.model_id, "data": cur.data_ref, "n": n_max, "folds": folds}
    cached = ws.load_run(dtasks.retrain_key(cur.model_id, data.id, n_max, folds))
    rjob = jobs.find("label-retrain", retrain_params)
    if cached is None and (rjob is not None and rjob.active
                           or st.button(_("Retrain on folds"), key="data_retrain_run")):
        session.run_job("label-retrain", retrain_params, title=_("k-fold retraining…"), what=_("The retraining"),
                        retry=not (rjob is not None and rjob.active))
        cached = ws.load_run(dtasks.retrain_key(cur.model_id, data.id, n_max, folds))
    elif cached is None and rjob is not None and not rjob.active:
        session.show_outcome(rjob, _("The retraining"))
    if cached is not None:
        st.write(_("k-fold retraining flags **{flagged}** of {checked} samples ({share}).").format(
            flagged=len(cached["indices"]), checked=num(cached["checked"], ","),
            share=num(len(cached["indices"]) / max(1, cached["checked"]), ".2%")))
        if cached["indices"]:
            st.dataframe(pd.DataFrame({"train index": cached["indices"],
                                       "given label": [classes[g] for g in cached["given"]],
                                       "suggested label": [classes[s] for s in cached["suggested"]],
                                       "p(given label)": cached["self_confidence"]}),
                         hide_index=True, width="stretch", height=200, key="data_retrain_table",
                         column_config={"train index": _("train index"), "given label": _("given label"),
                                        "suggested label": _("suggested label"),
                                        "p(given label)": _("p(given label)")})

st.header(_("Train/test mismatch"))
if rep is not None:
    px_ = rep.pixels
    m1, m2, m3 = st.columns(3)
    m1.metric(_("Domain-classifier AUC (penultimate features)"), num(rep.domain_auc, ".3f"),
              help=_("Logistic regression telling test from train, cross-validated. 0.5: no detectable mismatch."))
    m2.metric(_("Largest pixel-mean shift (train std)"), num(np.max(np.abs(px_.mean_shift)), ".3f"))
    m3.metric(_("Intensity-histogram distance (TV)"), num(np.max(px_.hist_distance), ".3f"))
    verdict = (_("no detectable mismatch") if rep.domain_auc <= 0.55 else
               _("a clear mismatch") if rep.domain_auc >= 0.6 else _("a slight mismatch"))
    st.write(_("The model's features show **{verdict}** between the splits (AUC {auc}).").format(
        verdict=verdict, auc=num(rep.domain_auc, ".3f")))
    st.dataframe(pd.DataFrame({"channel": range(len(px_.train_mean)), "train mean": px_.train_mean,
                               "test mean": px_.test_mean, "train std": px_.train_std, "test std": px_.test_std,
                               "mean shift (train std)": px_.mean_shift}), hide_index=True, width="stretch",
                 key="data_pixels",
                 column_config={"channel": _("channel"), "train mean": _("train mean"), "test mean": _("test mean"),
                                "train std": _("train std"), "test std": _("test std"),
                                "mean shift (train std)": _("mean shift (train std)")})
    centres = (px_.bins[:-1] + px_.bins[1:]) / 2
    fig = go.Figure()
    for ch in range(len(px_.train_mean)):
        fig.add_trace(go.Scatter(x=centres, y=px_.train_hist[ch], name=_("train ch{channel}").format(channel=ch),
                                 mode="lines"))
        fig.add_trace(go.Scatter(x=centres, y=px_.test_hist[ch], name=_("test ch{channel}").format(channel=ch),
                                 mode="lines", line=dict(dash="dash")))
    fig.update_layout(height=280, xaxis_title=_("intensity (0–1)"), yaxis_title=_("share of pixels"), yaxis_type="log",
                      margin=dict(l=10, r=10, t=10, b=10), separators=i18n.plotly_separators())
    widgets.chart(fig, key="data_hist")
    if rep.has_galleries and len(rep.mismatch_test_index):
        st.subheader(_("The most test-like test images"))
        st.caption(_("The test images the domain classifier scores most likely to come from the test split "
                     "(out-of-fold p(test); 0.5 means it cannot tell). With no mismatch they look like any other; "
                     "with one, they show what differs."))
        scale_m = display_scale(data.input_shape[1], 72)
        per_row = 8
        with st.container(key="mismatch_gallery"):
            for start in range(0, min(len(rep.mismatch_test_index), 16), per_row):
                for col, t, p_test in zip(st.columns(per_row), rep.mismatch_test_index[start:start + per_row],
                                          rep.mismatch_score[start:start + per_row]):
                    t = int(t)
                    col.image(as_image(data.x_test[t], scale_m),
                              caption=_("test #{index} · {label} · p(test) {p_test}").format(
                                  index=t, label=classes[int(data.y_test[t])], p_test=num(p_test, ".2f")),
                              output_format="PNG")

st.header(_("Near-duplicates across train and test (leakage)"))
if rep is not None:
    du = rep.duplicates
    st.caption(_("A test image counts when one of its 5 nearest training images in feature space has cosine "
                 "similarity ≥ {threshold} and differs by at most {pixel} mean absolute pixel value.").format(
        threshold=num(du.threshold, "g"), pixel=num(du.pixel_threshold, ".0%")))
    st.metric(_("Test images with a near-duplicate in train"), num(len(du.test_index), ","),
              help=_("of {n} test images").format(n=num(du.checked, ",")))
    if len(du.test_index):
        scale_d = display_scale(data.input_shape[1], 80)
        n_pairs = min(len(du.test_index), 12)
        with st.container(key="duplicates_gallery"):
            for start in range(0, n_pairs, 3):
                for col, j in zip(st.columns(3), range(start, min(start + 3, n_pairs))):
                    t, r = int(du.test_index[j]), int(du.train_index[j])
                    with col.container(border=True, key=f"dup_card_{t}"):
                        st.image([as_image(data.x_test[t], scale_d), as_image(data.x_train[r], scale_d)],
                                 caption=[_("test #{index} · {label}").format(
                                              index=t, label=classes[int(data.y_test[t])]),
                                          _("train #{index} · {label}").format(
                                              index=r, label=classes[int(data.y_train[r])])], output_format="PNG")
                        st.markdown(_("similarity {similarity} · pixel difference {pixel} · ").format(
                            similarity=num(du.similarity[j], ".3f"), pixel=num(du.pixel_diff[j], ".1%"))
                            + (_("same label") if du.same_label[j] else _(":red[labels differ]")))
        if len(du.test_index) > n_pairs:
            st.caption(_("The {shown} closest of {total} pairs; the table lists all.").format(
                shown=n_pairs, total=num(len(du.test_index), ",")))
        with st.expander(_("All pairs as a table")):
            st.dataframe(pd.DataFrame({"test index": du.test_index, "train index": du.train_index,
                                       "similarity": du.similarity, "pixel difference": du.pixel_diff,
                                       "same label": du.same_label}), hide_index=True, width="stretch",
                         height=200, key="data_dups",
                         column_config={"test index": _("test index"), "train index": _("train index"),
                                        "similarity": _("similarity"), "pixel difference": _("pixel difference"),
                                        "same label": _("same label")})
    st.caption(_("All feature-based checks took {seconds} s").format(seconds=num(rep.seconds, ".1f"))
               + (_("; the feature pass ran in {runtime}.").format(runtime=rep.runtime) if rep.runtime else "."))
