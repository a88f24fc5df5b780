"""The lecture's diagnosis rules on constructed (E_train, E_test, E_goal) triples."""

from __future__ import annotations

import pytest

from diagnostics.diagnosis import (CONTRADICTED, NEUTRAL, SUPPORTED, UNMEASURED, Facts, default_goal, diagnose)


def _verdicts(d):
    return {a.text.split(" (")[0]: a.verdict for a in d.actions}


@pytest.mark.parametrize("e_train, e_test, e_goal, regime", [
    (0.10, 0.12, 0.05, "underfitting"),
    (0.06, 0.30, 0.05, "underfitting"),
    (0.01, 0.10, 0.05, "overfitting or mismatch"),
    (0.05, 0.10, 0.05, "overfitting or mismatch"),  # E_train = E_goal: fits the goal on train
    (0.00, 0.04, 0.05, "goal met"),
    (0.08, 0.05, 0.05, "goal met"),
])
def test_regimes(e_train, e_test, e_goal, regime):
    d = diagnose(e_train, e_test, e_goal)
    assert d.regime == regime
    assert (len(d.actions) == 0) == (regime == "goal met")


def test_underfitting_actions_follow_the_lecture_and_the_evidence():
    hist = [{"epoch": i + 1, "train_loss": loss, "test_loss": loss + 0.1}
            for i, loss in enumerate([1.0, 0.8, 0.6, 0.4])]
    d = diagnose(0.10, 0.12, 0.05, Facts(history=hist, label_issue_fraction=0.002, label_issues=2, imbalance_ratio=5.0,
                                         pixel_shift=0.01))
    v = _verdicts(d)
    assert list(v) == ["Increase the network size", "Improve the training algorithm",
                       "Tune the training hyper-parameters", "Check the signal-to-noise of the data",
                       "Check the preprocessing", "Check for unreliable reference labels",
                       "Check for an imbalanced sample"]
    assert v["Increase the network size"] == SUPPORTED
    assert v["Improve the training algorithm"] == SUPPORTED  # loss still falling by 0.2 per epoch
    assert v["Check for unreliable reference labels"] == CONTRADICTED  # 0.2 % flagged vs 10 % error
    assert v["Check for an imbalanced sample"] == SUPPORTED
    assert v["Check the preprocessing"] == CONTRADICTED
    assert "0.200" in d.actions[1].evidence


def test_label_noise_contradicts_a_larger_network():
    d = diagnose(0.10, 0.12, 0.05, Facts(label_issue_fraction=0.08, label_issues=80))
    v = _verdicts(d)
    assert v["Check for unreliable reference labels"] == SUPPORTED
    assert v["Increase the network size"] == CONTRADICTED
    assert any(a.text == "Increase the network size" for a in d.contradictions)
    assert v["Improve the training algorithm"] == UNMEASURED  # no history given


def test_overfitting_actions_with_evidence():
    hist = [{"epoch": i + 1, "train_loss": 0.5 / (i + 1), "test_loss": t} for i, t in enumerate([0.5, 0.3, 0.35, 0.4])]
    d = diagnose(0.01, 0.10, 0.05, Facts(history=hist, test_slope=-0.02, domain_auc=0.51, class_shift=0.01,
                                         pixel_shift=0.0, duplicates=3))
    v = _verdicts(d)
    assert v["Enlarge the training set S_train"] == SUPPORTED
    assert v["Reduce the network size"] == SUPPORTED  # test loss rising at the end
    assert v["Choose another training algorithm"] == SUPPORTED  # best test loss at epoch 2 of 4
    assert "epoch 2 of 4" in d.actions[3].evidence
    assert v["Check for a mismatch between S_train and S_test"] == CONTRADICTED
    assert "0.510" in d.actions[4].evidence and d.actions[4].page == "pages/diagnose_data.py"
    assert any("leakage" in n for n in d.notes)


def test_flat_curve_and_small_gap_contradict_generic_remedies():
    d = diagnose(0.045, 0.10, 0.05, Facts(test_slope=0.001, domain_auc=0.85))
    v = _verdicts(d)
    assert v["Enlarge the training set S_train"] == CONTRADICTED
    # gap 5.5 % against excess 5 %: still overfitting; now shrink the gap relative to the excess
    d2 = diagnose(0.049, 0.20, 0.05, Facts(test_slope=-0.003, domain_auc=0.85))
    assert _verdicts(d2)["Enlarge the training set S_train"] == NEUTRAL
    assert _verdicts(d2)["Check for a mismatch between S_train and S_test"] == SUPPORTED
    d3 = diagnose(0.04, 0.10, 0.05, Facts(domain_auc=0.9))
    assert d3.actions[0].verdict == UNMEASURED


def test_capacity_actions_follow_the_test_loss_history():
    def hist(test_losses):
        return [{"epoch": i + 1, "train_loss": 0.1, "test_loss": t} for i, t in enumerate(test_losses)]

    rising = diagnose(0.01, 0.10, 0.05, Facts(history=hist([0.5, 0.4, 0.45, 0.5])))
    falling = diagnose(0.01, 0.10, 0.05, Facts(history=hist([0.9, 0.7, 0.5, 0.3])))
    flat_mismatch = diagnose(0.01, 0.10, 0.05, Facts(history=hist([0.4, 0.3, 0.3, 0.3]), domain_auc=0.8))
    unknown = diagnose(0.01, 0.10, 0.05, Facts())
    assert _verdicts(rising)["Reduce the network size"] == SUPPORTED
    assert _verdicts(falling)["Reduce the network size"] == CONTRADICTED
    assert "not overfitting yet" in falling.actions[1].evidence
    assert _verdicts(flat_mismatch)["Regularise"] == NEUTRAL
    assert _verdicts(flat_mismatch)["Check for a mismatch between S_train and S_test"] == SUPPORTED
    assert _verdicts(unknown)["Reduce the network size"] == NEUTRAL


def test_small_test_set_note():
    # 4 errors in 450: E_test 0.89 %, standard error 0.44 %; a goal of 0.44 % is within two of them
    d = diagnose(0.0, 4 / 450, 0.0044, n_test=450)
    assert any("two standard errors" in n for n in d.notes)
    d = diagnose(0.0, 0.089, 0.044, n_test=10_000)  # ±0.57 %: clearly apart
    assert not any("two standard errors" in n for n in d.notes)


def test_default_goal_and_bad_input():
    assert default_goal(0.10) == pytest.approx(0.07)
    assert default_goal(0.02) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        diagnose(1.5, 0.1, 0.05)
    with pytest.raises(ValueError):
        diagnose(0.1, float("nan"), 0.05)
