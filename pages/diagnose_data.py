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
from nnlab.data.viz import as_image, display_scale, grid
from nnlab.jobs import manager as jobs
from nnlab.ui import session, widgets

AUTO_MAX_TRAIN = 10000
PER_PAGE = 12  # label-error cards per page
NCOLS = 4


@st.cache_data(show_spinner=False, max_entries=8)
def _report(root: str, model_id: str, dataset_id: str, stamp: float):
    return dtasks.load_data_report(session.workspace(), model_id, dataset_id)


session.ensure_frame()  # first, before anything renders: a deep link on a fresh server runs app.py
st.title("Data checks")
cur = session.current()
data = cur.data
classes = data.classes

# --- class balance ---------------------------------------------------------------------------------------
st.header("Class balance")
tc, sc = data.class_counts("train"), data.class_counts("test")
shift = class_shift(tc, sc)
b1, b2, b3 = st.columns(3)
ratio = imbalance_ratio(tc)
b1.metric("Imbalance ratio (train, largest/smallest)", "∞" if not np.isfinite(ratio) else f"{ratio:.2f}")
b2.metric("Class-frequency shift train→test (TV distance)", f"{shift.tv_distance:.3f}")
b3.metric("χ² p-value (test counts vs train frequencies)", f"{shift.chi2_p:.3g}")
fig = go.Figure([go.Bar(name="train", x=classes, y=shift.train_freq),
                 go.Bar(name="test", x=classes, y=shift.test_freq)])
fig.update_layout(barmode="group", height=280, yaxis_title="share of the split", margin=dict(l=10, r=10, t=10, b=10))
fig.update_xaxes(type="category")
widgets.chart(fig, key="data_balance")
if tc.min() == 0:
    st.warning(f"Class(es) without training samples: {', '.join(c for c, n in zip(classes, tc) if n == 0)}.")

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
                              title="Running the data checks (features of both splits, label errors, mismatch, "
                                    "near-duplicates)…", what="The data checks")
        st.rerun()
    elif job is not None and job.status in (jobs.FAILED, jobs.CANCELLED, jobs.INTERRUPTED):
        session.show_outcome(job, "The data checks")
    else:
        st.info(f"The label-error, mismatch and duplicate checks extract the model's features for all "
                f"{len(data.y_train) + len(data.y_test):,} images (a background job: you may leave the page).")
        if st.button("Run the data checks", key="data_run", type="primary"):
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


def label_card(r: dict, decisions: dict[int, str], big: int, small: int) -> None:
    """One suspected label error: the image, both labels, the suggested class's nearest images, a decision."""
    idx = r["train_index"]
    st.image(as_image(data.x_train[idx], big), caption=f"train #{idx}", output_format="PNG")
    st.markdown(f"given **{r['given_class']}** · suggested **{r['suggested_class']}**  \n"
                f"p(given) {r['self_confidence']:.2f} · p(suggested) {r['p_suggested']:.2f}")
    if r["neighbours"]:
        st.image(grid([as_image(data.x_train[j], small) for j in r["neighbours"]], ncols=len(r["neighbours"])),
                 caption=f"nearest training images labelled {r['suggested_class']}", output_format="PNG")
    key = f"label_dec_{idx}"
    if key not in st.session_state and idx in decisions:  # decided on another page of the gallery
        st.session_state[key] = decisions[idx]
    st.radio("Your decision", datacheck.DECISIONS, key=key, horizontal=True, on_change=_record, args=(idx,),
             **({} if key in st.session_state else {"index": None}))


def label_gallery(rep: datacheck.DataReport) -> None:
    """The suspected label errors as cards, filtered by class pair and paged; decisions download as CSV."""
    rows = datacheck.label_error_rows(rep, classes)
    pairs: dict[tuple[int, int], int] = {}
    for r in rows:
        pairs[(r["given"], r["suggested"])] = pairs.get((r["given"], r["suggested"]), 0) + 1
    options = [None, *sorted(pairs, key=lambda p: (-pairs[p], p))]
    f1, f2 = st.columns([3, 1])
    pair = f1.selectbox("Given label → suggested label", options, key="label_pair",
                        format_func=lambda p: f"all pairs ({len(rows):,})" if p is None else
                        f"{classes[p[0]]} → {classes[p[1]]} ({pairs[p]:,})")
    shown = [r for r in rows if pair is None or (r["given"], r["suggested"]) == pair]
    pages = max(1, -(-len(shown) // PER_PAGE))
    if st.session_state.get("label_page", 1) > pages:
        st.session_state["label_page"] = pages
    page = int(f2.number_input(f"Page (of {pages})", 1, pages, 1, key="label_page"))
    st.caption("Each card: the training image as the model sees it, its given label and the label the "
               "out-of-sample model suggests with their probabilities (p(given) is the self-confidence), and the "
               "nearest training images labelled with the suggested class in the model's penultimate-feature space.")
    decisions = _decisions()
    big, small = display_scale(data.input_shape[1], 112), display_scale(data.input_shape[1], 40)
    part = shown[(page - 1) * PER_PAGE:page * PER_PAGE]
    with st.container(key="label_gallery"):
        for start in range(0, len(part), NCOLS):
            for col, r in zip(st.columns(NCOLS), part[start:start + NCOLS]):
                with col.container(border=True, key=f"label_card_{r['train_index']}"):
                    label_card(r, decisions, big, small)
    counts = {d: sum(1 for v in decisions.values() if v == d) for d in datacheck.DECISIONS}
    st.caption(f"{len(decisions):,} of {len(rows):,} decided: " + ", ".join(f"{n} {d}" for d, n in counts.items()))
    d1, d2 = st.columns(2)
    d1.download_button("Decisions (CSV)", datacheck.decisions_csv(rows, decisions), mime="text/csv",
                       file_name=f"label-decisions-{data.id}.csv", key="label_dl_decisions",
                       icon=":material/download:", help="The samples you decided on, with both labels",
                       on_click="ignore")
    d2.download_button("Relabelling (CSV)", datacheck.relabelling_csv(rows, decisions), mime="text/csv",
                       file_name=f"relabelling-{data.id}.csv", key="label_dl_relabel", icon=":material/download:",
                       help="The samples you marked 'label wrong', with the suggested label to use instead",
                       on_click="ignore")


st.header("Suspected label errors")
if rep is not None:
    li = rep.labels
    st.caption(f"Confident learning (Northcutt et al. 2021) on out-of-sample probabilities: {li.method}. The features "
               "were learned with these labels, so they are only partly out-of-sample; k-fold retraining below is "
               "exact.")
    e_train = session.evaluation("train", cur).error
    if e_train < 0.005:
        st.warning(f"This model fits its training set almost perfectly (E_train = {e_train:.2%}): its features have "
                   "memorised the given labels, so this fast route misses most label errors (on digits with 5 % "
                   "flipped labels it found 85 % of them after 3 epochs, 27 % after 18). Use the exact k-fold "
                   "retraining below.")
    l1, l2 = st.columns(2)
    l1.metric("Suspected label errors", f"{len(li.indices):,}", help=f"of {li.checked:,} training samples checked")
    l2.metric("Share of the checked samples", f"{li.fraction:.2%}")
    if not len(li.indices):
        st.success("No suspected label errors.")
    elif not rep.has_galleries:
        st.info("This report was stored by an earlier version without the gallery's neighbours and scores: run the "
                "checks again to see the suspected errors as images.")
        if st.button("Run the data checks again", key="data_rerun_old"):
            jobs.submit("data-checks", check_params, owner=session.owner(), rerun=True)
            st.rerun()
    else:
        with st.container(key="label_errors"):
            label_gallery(rep)

with st.expander("Exact check: k-fold retraining of the architecture (slower)"):
    n_train = len(data.y_train)
    n_max = int(st.number_input("Training samples to check (stratified subsample)", min_value=min(100, n_train),
                                max_value=n_train, value=min(n_train, 2000), step=min(100, n_train),
                                key="data_retrain_n"))
    folds = int(st.number_input("Folds", min_value=2, max_value=10, value=4, key="data_retrain_folds"))
    retrain_params = {"model_id": cur.model_id, "data": cur.data_ref, "n": n_max, "folds": folds}
    cached = ws.load_run(dtasks.retrain_key(cur.model_id, data.id, n_max, folds))
    rjob = jobs.find("label-retrain", retrain_params)
    if cached is None and (rjob is not None and rjob.active or st.button("Retrain on folds", key="data_retrain_run")):
        session.run_job("label-retrain", retrain_params, title="k-fold retraining…", what="The retraining",
                        retry=not (rjob is not None and rjob.active))
        cached = ws.load_run(dtasks.retrain_key(cur.model_id, data.id, n_max, folds))
    elif cached is None and rjob is not None and not rjob.active:
        session.show_outcome(rjob, "The retraining")
    if cached is not None:
        st.write(f"k-fold retraining flags **{len(cached['indices'])}** of {cached['checked']:,} samples "
                 f"({len(cached['indices']) / max(1, cached['checked']):.2%}).")
        if cached["indices"]:
            st.dataframe(pd.DataFrame({"train index": cached["indices"],
                                       "given label": [classes[g] for g in cached["given"]],
                                       "suggested label": [classes[s] for s in cached["suggested"]],
                                       "p(given label)": cached["self_confidence"]}),
                         hide_index=True, width="stretch", height=200, key="data_retrain_table")

st.header("Train/test mismatch")
if rep is not None:
    px_ = rep.pixels
    m1, m2, m3 = st.columns(3)
    m1.metric("Domain-classifier AUC (penultimate features)", f"{rep.domain_auc:.3f}",
              help="Logistic regression telling test from train, cross-validated. 0.5: no detectable mismatch.")
    m2.metric("Largest pixel-mean shift (train std)", f"{np.max(np.abs(px_.mean_shift)):.3f}")
    m3.metric("Intensity-histogram distance (TV)", f"{np.max(px_.hist_distance):.3f}")
    verdict = ("no detectable mismatch" if rep.domain_auc <= 0.55 else
               "a clear mismatch" if rep.domain_auc >= 0.6 else "a slight mismatch")
    st.write(f"The model's features show **{verdict}** between the splits (AUC {rep.domain_auc:.3f}).")
    st.dataframe(pd.DataFrame({"channel": range(len(px_.train_mean)), "train mean": px_.train_mean,
                               "test mean": px_.test_mean, "train std": px_.train_std, "test std": px_.test_std,
                               "mean shift (train std)": px_.mean_shift}), hide_index=True, width="stretch",
                 key="data_pixels")
    centres = (px_.bins[:-1] + px_.bins[1:]) / 2
    fig = go.Figure()
    for ch in range(len(px_.train_mean)):
        fig.add_trace(go.Scatter(x=centres, y=px_.train_hist[ch], name=f"train ch{ch}", mode="lines"))
        fig.add_trace(go.Scatter(x=centres, y=px_.test_hist[ch], name=f"test ch{ch}", mode="lines",
                                 line=dict(dash="dash")))
    fig.update_layout(height=280, xaxis_title="intensity (0–1)", yaxis_title="share of pixels", yaxis_type="log",
                      margin=dict(l=10, r=10, t=10, b=10))
    widgets.chart(fig, key="data_hist")
    if rep.has_galleries and len(rep.mismatch_test_index):
        st.subheader("The most test-like test images")
        st.caption("The test images the domain classifier scores most likely to come from the test split "
                   "(out-of-fold p(test); 0.5 means it cannot tell). With no mismatch they look like any other; "
                   "with one, they show what differs.")
        scale_m = display_scale(data.input_shape[1], 72)
        per_row = 8
        with st.container(key="mismatch_gallery"):
            for start in range(0, min(len(rep.mismatch_test_index), 16), per_row):
                for col, t, p_test in zip(st.columns(per_row), rep.mismatch_test_index[start:start + per_row],
                                          rep.mismatch_score[start:start + per_row]):
                    t = int(t)
                    col.image(as_image(data.x_test[t], scale_m),
                              caption=f"test #{t} · {classes[int(data.y_test[t])]} · p(test) {p_test:.2f}",
                              output_format="PNG")

st.header("Near-duplicates across train and test (leakage)")
if rep is not None:
    du = rep.duplicates
    st.caption(f"A test image counts when one of its 5 nearest training images in feature space has cosine similarity "
               f"≥ {du.threshold} and differs by at most {du.pixel_threshold:.0%} mean absolute pixel value.")
    st.metric("Test images with a near-duplicate in train", f"{len(du.test_index):,}",
              help=f"of {du.checked:,} test images")
    if len(du.test_index):
        scale_d = display_scale(data.input_shape[1], 80)
        n_pairs = min(len(du.test_index), 12)
        with st.container(key="duplicates_gallery"):
            for start in range(0, n_pairs, 3):
                for col, j in zip(st.columns(3), range(start, min(start + 3, n_pairs))):
                    t, r = int(du.test_index[j]), int(du.train_index[j])
                    with col.container(border=True, key=f"dup_card_{t}"):
                        st.image([as_image(data.x_test[t], scale_d), as_image(data.x_train[r], scale_d)],
                                 caption=[f"test #{t} · {classes[int(data.y_test[t])]}",
                                          f"train #{r} · {classes[int(data.y_train[r])]}"], output_format="PNG")
                        st.markdown(f"similarity {du.similarity[j]:.3f} · pixel difference {du.pixel_diff[j]:.1%} · "
                                    + ("same label" if du.same_label[j] else ":red[labels differ]"))
        if len(du.test_index) > n_pairs:
            st.caption(f"The {n_pairs} closest of {len(du.test_index):,} pairs; the table lists all.")
        with st.expander("All pairs as a table"):
            st.dataframe(pd.DataFrame({"test index": du.test_index, "train index": du.train_index,
                                       "similarity": du.similarity, "pixel difference": du.pixel_diff,
                                       "same label": du.same_label}), hide_index=True, width="stretch",
                         height=200, key="data_dups")
    st.caption(f"All feature-based checks took {rep.seconds:.1f} s"
               + (f"; the feature pass ran in {rep.runtime}." if rep.runtime else "."))
