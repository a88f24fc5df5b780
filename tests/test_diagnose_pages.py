"""Every Diagnose page through AppTest on the digits demo model: no exception, the numbers shown."""

from __future__ import annotations

import numpy as np
import pytest

from diagnostics import curves, errors
from nnlab.evaluate import evaluate
from nnlab.workspace import Workspace
from tests.conftest import app_test


@pytest.fixture(scope="module")
def evals(demo, digits):
    model = demo[0]
    return evaluate(model, digits, "test"), evaluate(model, digits, "train")


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [str(m.value) for m in at.metric]
    parts += [w.value for w in at.warning] + [w.value for w in at.info] + [w.value for w in at.success]
    return "\n".join(map(str, parts))


def _metric(at, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"no metric {label!r}; have {[m.label for m in at.metric]}")


def test_goal_page_shows_errors_and_diagnosis(demo, evals):
    ev_test, ev_train = evals
    at = app_test("pages/diagnose_goal.py").run()
    assert not at.exception
    assert _metric(at, "E_test") == f"{ev_test.error:.2%}"
    assert _metric(at, "E_train") == f"{ev_train.error:.2%}"
    if ev_train.error > 0.001:  # a goal below E_train: underfitting
        at.number_input(key="goal_e_goal").set_value(ev_train.error * 50).run()
        assert not at.exception
        assert any("Diagnosis: underfitting" in h.value for h in at.subheader)
    at.number_input(key="goal_e_goal").set_value(min(100.0, ev_test.error * 100 + 1)).run()
    assert any("Diagnosis: goal met" in h.value for h in at.subheader)
    assert not any("The lecture's actions" in m.value for m in at.markdown)  # no actions once the goal is met


def test_goal_page_overfitting_lists_actions_with_evidence(demo, evals):
    ev_test, ev_train = evals
    if not ev_train.error < ev_test.error:
        pytest.skip("demo model does not overfit on digits")
    at = app_test("pages/diagnose_goal.py")
    at.session_state["goal_e_goal"] = round((ev_train.error + ev_test.error) / 2 * 100, 3)
    at.run()
    assert not at.exception
    assert any("overfitting or mismatch" in h.value for h in at.subheader)
    actions = [m.value for m in at.markdown if "**Check for a mismatch between S_train and S_test**" in m.value]
    assert len(actions) == 1
    assert "domain-classifier AUC = " in actions[0]  # measured, not a placeholder
    assert any("Enlarge the training set S_train" in m.value for m in at.markdown)


def test_classes_page_matches_metrics(demo, digits, evals):
    ev_test, _ = evals
    an = errors.analyze(ev_test.probs, ev_test.losses, ev_test.labels, digits.num_classes)
    at = app_test("pages/diagnose_classes.py").run()
    assert not at.exception
    assert _metric(at, "Macro F1") == f"{an.metrics.f1.mean():.3f}"
    table = at.dataframe[0].value
    np.testing.assert_allclose(table["recall"].to_numpy(), an.metrics.recall)
    # choose a cell through the selectboxes: the count shown is the confusion-matrix entry
    pair = an.pairs[0]
    at.selectbox(key="classes_true").set_value(pair.true)
    at.selectbox(key="classes_pred").set_value(pair.pred).run()
    assert not at.exception
    assert f"**{pair.count}** test samples" in _texts(at)
    at.radio(key="classes_norm").set_value("row-normalised").run()
    assert not at.exception


def test_worst_page_pages_and_filters(demo, digits, evals):
    ev_test, _ = evals
    at = app_test("pages/diagnose_worst.py").run()
    assert not at.exception
    n_wrong = int((ev_test.preds != ev_test.labels).sum())
    assert f"{n_wrong:,} samples match" in _texts(at)
    worst = int(errors.rank_samples(ev_test.probs, ev_test.losses, ev_test.labels, "loss")[0])
    assert at.image[0].value is not None and f"#{worst}" in str(at.image[0].proto.imgs[0].caption)
    at.checkbox(key="worst_only_wrong").set_value(False)
    at.selectbox(key="worst_true").set_value(3)
    at.selectbox(key="worst_sort").set_value("margin").run()
    assert not at.exception
    assert f"{int((ev_test.labels == 3).sum()):,} samples match" in _texts(at)
    at.number_input(key="worst_page").set_value(2).run()
    assert not at.exception
    at.selectbox(key="worst_pred").set_value(3)
    at.selectbox(key="worst_true").set_value(3)
    at.checkbox(key="worst_only_wrong").set_value(True).run()
    assert not at.exception
    assert any("No sample matches" in i.value for i in at.info)


def test_worst_page_button_hands_sample_to_attributions(demo):
    at = app_test("pages/diagnose_worst.py").run()
    buttons = [b for b in at.button if b.key and b.key.startswith("worst_inspect_")]
    assert buttons
    idx = int(buttons[0].key.rsplit("_", 1)[1])
    buttons[0].click().run()
    assert at.session_state["inspect_index"] == idx
    assert at.session_state["inspect_split"] == "test"


def test_data_page_shows_checks(demo, digits):
    at = app_test("pages/diagnose_data.py").run()
    assert not at.exception, at.exception
    tc = digits.class_counts("train")
    assert _metric(at, "Imbalance ratio (train, largest/smallest)") == f"{tc.max() / tc.min():.2f}"
    auc = float(_metric(at, "Domain-classifier AUC (penultimate features)"))
    assert 0.3 < auc < 0.7  # digits' split is random and stratified
    assert int(_metric(at, "Suspected label errors").replace(",", "")) < 0.1 * len(digits.y_train)
    assert Workspace().load_run("datacheck_demo-cnn-digits_digits") is not None


def test_curves_page_shows_history_and_cached_curve(demo, digits):
    ws = Workspace()
    key = curves.cache_key("demo-cnn-digits", digits.id, [0.5, 1.0], 2)
    pts = [curves.CurvePoint(0.5, 673, 0.05, 0.09, 1.0), curves.CurvePoint(1.0, 1347, 0.03, 0.05, 2.0)]
    from dataclasses import asdict

    ws.save_run(key, {"points": [asdict(p) for p in pts]})
    at = app_test("pages/diagnose_curves.py")
    at.session_state["curves_fractions"] = [0.5, 1.0]
    at.session_state["curves_epochs"] = 2
    at.run()
    assert not at.exception
    assert "Last epoch" in _texts(at)
    table = at.dataframe[0].value
    assert list(table["training samples"]) == [673, 1347]
    assert _metric(at, "E_test change per doubling of the training set (last two points)") == "-4.00%"


def test_data_page_kfold_retraining_on_a_subsample(demo, digits):
    at = app_test("pages/diagnose_data.py").run()
    at.number_input(key="data_retrain_n").set_value(100)
    at.number_input(key="data_retrain_folds").set_value(2).run()
    at.button(key="data_retrain_run").click().run()
    assert not at.exception, at.exception
    shown = [m.value for m in at.markdown if "k-fold retraining flags" in m.value]
    assert len(shown) == 1 and "of 100 samples" in shown[0]
    run = Workspace().load_run("labels-retrain_demo-cnn-digits_digits_100_2")
    assert run is not None and run["checked"] == 100
    assert all(0 <= i < len(digits.y_train) for i in run["indices"])
