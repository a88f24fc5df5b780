"""The Data checks page's galleries: suspected label errors (with neighbours of the suggested class, filters by
class pair, a decision per sample, CSV downloads), near-duplicate pairs and the most test-like test images. The
data: digits with 5 % of the training labels flipped (an ImageFolder), its demo model, its stored report."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest

from diagnostics import datacheck
from diagnostics import mismatch as M
from diagnostics import tasks as dtasks
from nnlab.workspace import Workspace
from tests import noisy_digits
from tests.conftest import app_test

PAGE = "pages/diagnose_data.py"


@pytest.fixture(scope="module")
def noisy(demo):
    return noisy_digits.make(Path(os.environ["NNLAB_WORKSPACE"]).parent)


@pytest.fixture(scope="module")
def report(noisy):
    rep = dtasks.load_data_report(Workspace(), noisy.model_id, noisy.data.id)
    assert rep is not None and rep.has_galleries
    return rep


def _page(noisy):
    at = app_test(PAGE)
    at.session_state["dataset"] = "imagefolder"
    at.session_state["dataset_path"] = str(noisy.path)
    return at.run()


def _card_ids(at) -> list[int]:
    return [int(r.key.removeprefix("label_dec_")) for r in at.radio if (r.key or "").startswith("label_dec_")]


# --- the report's gallery fields ----------------------------------------------------------------------------------

def test_the_check_finds_the_flipped_labels_and_suggests_the_true_ones(noisy, report):
    idx = report.label_train_index
    found = [int(i) for i in idx if int(i) in noisy.flipped]
    assert len(found) >= 0.6 * len(noisy.flipped)  # most of the 67 flips (53 of 54 suspects in a reference run)
    assert len(found) >= 0.8 * len(idx)  # and few false alarms
    for i, g, s in zip(idx, report.labels.given, report.labels.suggested):
        if int(i) in noisy.flipped:
            assert int(g) == noisy.flipped[int(i)][1]
    right = sum(int(s) == noisy.flipped[int(i)][0] for i, s in zip(idx, report.labels.suggested)
                if int(i) in noisy.flipped)
    assert right >= 0.8 * len(found)  # the suggested label is the true one


def test_neighbours_are_the_nearest_of_the_suggested_class(noisy, report):
    """Referee: scikit-learn's brute-force cosine neighbours on the same centred features."""
    from sklearn.neighbors import NearestNeighbors

    from nnlab.jobs import refs

    model, _ = refs.load_model(noisy.model_id)
    f, _ = M.features_and_logits(model, noisy.data, "train")
    f = f - f.mean(axis=0, keepdims=True)
    y = noisy.data.y_train.numpy()
    flagged = set(report.label_train_index.tolist())
    for pos, (i, s) in enumerate(zip(report.label_train_index[:10], report.labels.suggested[:10])):
        cand = np.array([j for j in np.flatnonzero(y == s) if j not in flagged])
        nn = NearestNeighbors(n_neighbors=datacheck.NEIGHBOURS, metric="cosine", algorithm="brute").fit(f[cand])
        _, ref = nn.kneighbors(f[[int(i)]])
        assert report.label_neighbours[pos].tolist() == cand[ref[0]].tolist()
        assert (y[report.label_neighbours[pos]] == s).all()
    assert report.label_suggested_prob.shape == report.labels.self_confidence.shape
    assert (report.label_suggested_prob > report.labels.self_confidence).all()


def test_class_neighbours_pads_when_a_class_has_few_candidates():
    f = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.5, 0.5]])
    labels = np.array([0, 0, 1, 1, 1])
    idx, sim = datacheck.class_neighbours(f, labels, np.array([4]), np.array([0]), k=3)
    assert idx[0, 2] == -1 and sim[0, 2] == 0.0 and set(idx[0, :2]) == {0, 1}


def test_domain_classifier_is_domain_auc_with_scores():
    g = np.random.default_rng(0)
    tr, te = g.standard_normal((60, 4)), g.standard_normal((50, 4)) + [1.5, 0, 0, 0]
    dom = M.domain_classifier(tr, te, max_per_split=40)
    assert dom.auc == M.domain_auc(tr, te, max_per_split=40) > 0.8
    scores, y = M.domain_scores(tr, te, max_per_split=40)
    assert np.array_equal(dom.test_score, scores[y == 1])
    assert np.corrcoef(dom.test_score, te[dom.test_index, 0])[0, 1] > 0.9  # the most shifted score highest


def test_report_round_trip_and_old_reports(report):
    again = datacheck.DataReport.from_dict(report.to_dict())
    assert again.version == datacheck.REPORT_VERSION
    for name in ("label_neighbours", "label_neighbour_similarity", "label_suggested_prob", "mismatch_test_index",
                 "mismatch_score"):
        assert np.array_equal(getattr(again, name), getattr(report, name)), name
    old = report.to_dict()
    for name in ("label_neighbours", "label_neighbour_similarity", "label_suggested_prob", "mismatch_test_index",
                 "mismatch_score", "version"):
        old.pop(name)
    legacy = datacheck.DataReport.from_dict(old)  # stored before the galleries: still loads, without them
    assert not legacy.has_galleries and len(legacy.labels.indices) == len(report.labels.indices)
    assert (np.diff(report.mismatch_score) <= 0).all() and len(report.mismatch_test_index) == datacheck.MISMATCH_SHOWN


def test_decision_and_relabelling_csv():
    rows = [{"train_index": 7, "given": 1, "suggested": 2, "given_class": "1", "suggested_class": "2",
             "self_confidence": 0.1, "p_suggested": 0.8},
            {"train_index": 3, "given": 4, "suggested": 9, "given_class": "4", "suggested_class": "9",
             "self_confidence": 0.2, "p_suggested": 0.7},
            {"train_index": 5, "given": 0, "suggested": 6, "given_class": "0", "suggested_class": "6",
             "self_confidence": 0.3, "p_suggested": 0.6}]
    dec = {3: "label right", 7: "label wrong", 99: "label wrong"}
    assert datacheck.decisions_csv(rows, dec) == (
        "train_index,given_label,suggested_label,given_class,suggested_class,self_confidence,p_suggested,decision\n"
        "7,1,2,1,2,0.100000,0.800000,label wrong\n3,4,9,4,9,0.200000,0.700000,label right\n")
    assert datacheck.relabelling_csv(rows, dec) == (
        "train_index,given_label,new_label,given_class,new_class\n7,1,2,1,2\n")


# --- the page ---------------------------------------------------------------------------------------------------

def test_gallery_shows_the_suspects_in_order_with_their_labels(noisy, report):
    at = _page(noisy)
    assert not at.exception, at.exception
    ids = _card_ids(at)
    assert ids == report.label_train_index[:12].tolist()
    classes = noisy.data.classes
    g, sg = classes[report.labels.given[0]], classes[report.labels.suggested[0]]
    text = (f"given **{g}** · suggested **{sg}**  \n"
            f"p(given) {report.labels.self_confidence[0]:.2f} · p(suggested) {report.label_suggested_prob[0]:.2f}")
    assert text in [m.value for m in at.markdown]
    captions = [c for el in at.get("image") for c in _captions(el)]
    assert all(f"train #{i}" in captions for i in ids)  # one image per card
    assert f"nearest training images labelled {classes[report.labels.suggested[0]]}" in captions


def test_filter_by_class_pair(noisy, report):
    at = _page(noisy)
    pairs = list(zip(report.labels.given.tolist(), report.labels.suggested.tolist()))
    common = max(set(pairs), key=pairs.count)
    at.selectbox(key="label_pair").set_value(common).run()
    assert not at.exception, at.exception
    want = [int(i) for i, p in zip(report.label_train_index, pairs) if p == common][:12]
    assert _card_ids(at) == want


def test_decisions_survive_paging_and_fill_the_csvs(noisy, report):
    at = _page(noisy)
    ids = _card_ids(at)
    marks = {ids[0]: "label wrong", ids[1]: "label right", ids[2]: "unsure"}
    for i, d in marks.items():
        at.radio(key=f"label_dec_{i}").set_value(d).run()
    assert not at.exception, at.exception
    store = at.session_state[f"label_decisions::{noisy.model_id}::{noisy.data.id}"]
    assert store == marks
    assert any(c.value.startswith(f"3 of {len(report.label_train_index)} decided") for c in at.caption)
    if len(report.label_train_index) > 12:
        at.number_input(key="label_page").set_value(2).run()
        assert ids[0] not in _card_ids(at)
        at.number_input(key="label_page").set_value(1).run()
        assert at.radio(key=f"label_dec_{ids[0]}").value == "label wrong"  # restored after paging back
    rows = datacheck.label_error_rows(report, noisy.data.classes)
    got = list(csv.DictReader(io.StringIO(datacheck.decisions_csv(rows, store))))
    assert {int(r["train_index"]): r["decision"] for r in got} == marks


def test_duplicate_and_mismatch_galleries(noisy, report):
    du = report.duplicates
    assert dict(zip(du.test_index.tolist(), du.train_index.tolist())) == noisy.leaked  # exactly the copies
    at = _page(noisy)
    assert not at.exception, at.exception
    pairs = [_captions(el) for el in at.get("image") if len(_captions(el)) == 2]
    for t, r in noisy.leaked.items():  # each pair side by side in one image element
        assert any(a.startswith(f"test #{t} · ") and b.startswith(f"train #{r} · ") for a, b in pairs)
    assert any("most test-like" in h.value for h in at.subheader)
    captions = [c for el in at.get("image") for c in _captions(el)]
    first = int(report.mismatch_test_index[0])
    assert any(c.startswith(f"test #{first} · ") and f"p(test) {report.mismatch_score[0]:.2f}" in c
               for c in captions)


def _captions(el) -> list[str]:
    return [img.caption for img in el.proto.imgs]
