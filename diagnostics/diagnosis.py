"""The lecture's diagnosis of a test error above the goal (E_test > E_goal), with measured evidence.

Lecture 4 ("Efficiency of neural networks") splits the problem in two:

- E_train > E_goal (the network does not even fit its training set): enlarge the network, improve the
  training algorithm, tune the training hyper-parameters, and check the data: low signal-to-noise,
  preprocessing errors, unreliable reference labels, an imbalanced sample.
- E_train < E_goal < E_test (it fits the training set but does not generalise): enlarge S_train, shrink
  the network, tune its hyper-parameters (regularisation), choose another training algorithm, and check
  for a mismatch between S_train and S_test.

Each action comes with what the app measured for it, a verdict (supported, contradicted, neutral, not
measured) and the page that shows the evidence. Thresholds are module constants, stated in the text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from diagnostics.curves import history_trend

PAGES = {
    "goal": "pages/diagnose_goal.py",
    "classes": "pages/diagnose_classes.py",
    "worst": "pages/diagnose_worst.py",
    "data": "pages/diagnose_data.py",
    "curves": "pages/diagnose_curves.py",
}

SUPPORTED, CONTRADICTED, NEUTRAL, UNMEASURED = "supported", "contradicted", "neutral", "not measured"

SLOPE_HELPS = -0.005  # E_test change per doubling of S_train below which more data clearly helps
SLOPE_FLAT = 0.002  # |change| below which the curve is flat
LOSS_STILL_FALLING = -0.01  # train loss change per epoch, last epochs
IMBALANCE_HIGH, IMBALANCE_LOW = 3.0, 1.5
AUC_MISMATCH, AUC_NONE = 0.6, 0.55
CLASS_SHIFT_HIGH = 0.05  # total variation distance of class frequencies
PIXEL_SHIFT_HIGH = 0.25  # |mean shift| in training standard deviations


@dataclass(frozen=True)
class Facts:
    """What the app measured (``None``: not measured yet)."""

    history: Sequence[dict] = ()
    test_slope: float | None = None
    label_issue_fraction: float | None = None
    label_issues: int | None = None
    imbalance_ratio: float | None = None
    domain_auc: float | None = None
    class_shift: float | None = None
    pixel_shift: float | None = None
    duplicates: int | None = None


@dataclass(frozen=True)
class Action:
    """One of the lecture's actions, with the evidence for or against it."""

    text: str
    verdict: str
    evidence: str
    page: str | None = None


@dataclass(frozen=True)
class Diagnosis:
    """The regime, the lecture's actions with evidence, and the contradictions found."""

    regime: str
    headline: str
    e_train: float
    e_test: float
    e_goal: float
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def contradictions(self) -> list[Action]:
        return [a for a in self.actions if a.verdict == CONTRADICTED]


def default_goal(e_test: float) -> float:
    """A goal a few points better than the current test error: ``max(E_test/2, E_test − 0.03)``."""
    if not math.isfinite(e_test):
        return 0.0
    return round(max(e_test / 2, e_test - 0.03), 4)


def diagnose(e_train: float, e_test: float, e_goal: float, facts: Facts = Facts(), n_test: int = 0) -> Diagnosis:
    """Apply the lecture's rules to (E_train, E_test, E_goal) and attach the measured evidence.

    With ``n_test`` (the test-set size) a note says when E_test − E_goal is within two standard errors of
    the test-error estimate, i.e. when the test set is too small to tell.
    """
    for name, v in (("E_train", e_train), ("E_test", e_test), ("E_goal", e_goal)):
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ValueError(f"{name} must be an error rate in [0, 1], got {v}")
    notes = _common_notes(e_train, e_test, facts)
    if n_test > 0:
        se = math.sqrt(max(e_test * (1 - e_test), 1.0 / n_test) / n_test)
        if abs(e_test - e_goal) < 2 * se:
            notes.append(f"E_test − E_goal = {e_test - e_goal:+.2%} is within two standard errors "
                         f"(±{2 * se:.2%}) of the test error measured on {n_test:,} images: the test set cannot "
                         "tell these apart.")
    if e_test <= e_goal:
        extra = (" The training error is above the test error, which is unusual (dropout and augmentation "
                 "are active only while training; train error here is measured in eval mode)."
                 if e_train > e_test else "")
        return Diagnosis("goal met", f"E_test = {e_test:.2%} ≤ E_goal = {e_goal:.2%}: the goal is met.{extra}",
                         e_train, e_test, e_goal, [], notes)
    if e_train > e_goal:
        head = (f"E_train = {e_train:.2%} > E_goal = {e_goal:.2%}: the network does not reach the goal even on its "
                f"training set (underfitting, or a data problem). Work on the training error first.")
        if e_test - e_train > max(0.02, 0.5 * (e_train - e_goal)):
            notes.append(f"The train/test gap is also large ({e_test - e_train:+.2%}): once the training error is "
                         "down, expect the overfitting actions to matter too.")
        actions = _underfit_actions(e_train, e_goal, facts)
        return Diagnosis("underfitting", head, e_train, e_test, e_goal, actions, notes)
    head = (f"E_train = {e_train:.2%} ≤ E_goal = {e_goal:.2%} < E_test = {e_test:.2%}: the network fits its training "
            f"set but does not generalise (overfitting, or a train/test mismatch).")
    return Diagnosis("overfitting or mismatch", head, e_train, e_test, e_goal,
                     _overfit_actions(e_train, e_test, e_goal, facts), notes)


def _common_notes(e_train: float, e_test: float, f: Facts) -> list[str]:
    notes = []
    if f.duplicates:
        notes.append(f"{f.duplicates} test samples have a near-identical training sample (leakage): E_test may be "
                     "optimistic.")
    return notes


def _label_action(e_train: float, f: Facts) -> Action:
    text = "Check for unreliable reference labels"
    if f.label_issue_fraction is None:
        return Action(text, UNMEASURED, "Run the label-error check on the Data checks page.", PAGES["data"])
    frac = f.label_issue_fraction
    ev = f"confident learning flags {f.label_issues or 0} training samples ({frac:.2%}); E_train is {e_train:.2%}"
    if frac >= max(0.01, 0.5 * e_train):
        return Action(text, SUPPORTED, ev + ": suspected label errors explain a large share of the training error.",
                      PAGES["data"])
    if frac < 0.25 * e_train:
        return Action(text, CONTRADICTED, ev + ": too few to explain the training error.", PAGES["data"])
    return Action(text, NEUTRAL, ev + ".", PAGES["data"])


def _imbalance_action(f: Facts) -> Action:
    text = "Check for an imbalanced sample"
    if f.imbalance_ratio is None:
        return Action(text, UNMEASURED, "Class counts not measured.", PAGES["data"])
    r = f.imbalance_ratio
    ev = f"largest/smallest class = {r:.2f}"
    if r >= IMBALANCE_HIGH:
        return Action(text, SUPPORTED, ev + f" (≥ {IMBALANCE_HIGH:g}): reweight or resample.", PAGES["data"])
    if r <= IMBALANCE_LOW:
        return Action(text, CONTRADICTED, ev + f" (≤ {IMBALANCE_LOW:g}): the classes are balanced.", PAGES["data"])
    return Action(text, NEUTRAL, ev + ": mild imbalance.", PAGES["data"])


def _preprocessing_action(f: Facts) -> Action:
    text = "Check the preprocessing (input statistics train vs test)"
    if f.pixel_shift is None:
        return Action(text, UNMEASURED, "Pixel statistics not measured.", PAGES["data"])
    ev = f"largest per-channel mean shift test vs train = {f.pixel_shift:.2f} training std"
    if abs(f.pixel_shift) >= PIXEL_SHIFT_HIGH:
        return Action(text, SUPPORTED, ev + f" (≥ {PIXEL_SHIFT_HIGH:g}): the splits are preprocessed differently.",
                      PAGES["data"])
    return Action(text, CONTRADICTED, ev + ": the input statistics agree.", PAGES["data"])


def _underfit_actions(e_train: float, e_goal: float, f: Facts) -> list[Action]:
    gap = e_train - e_goal
    trend = history_trend(f.history, "train_loss")
    label = _label_action(e_train, f)
    if label.verdict == SUPPORTED:
        bigger = Action("Increase the network size", CONTRADICTED,
                        f"E_train − E_goal = {gap:+.2%}, but suspected label errors ({f.label_issue_fraction:.2%}) "
                        "account for much of it: a larger network would learn the wrong labels.", PAGES["data"])
    else:
        bigger = Action("Increase the network size", SUPPORTED,
                        f"E_train − E_goal = {gap:+.2%}: the network does not fit its training set.", PAGES["curves"])
    if trend is None:
        algo = Action("Improve the training algorithm (longer training, optimiser, schedule)", UNMEASURED,
                      "No per-epoch history for this model.", PAGES["curves"])
        hyper = Action("Tune the training hyper-parameters (learning rate, batch size, epochs)", UNMEASURED,
                       "No per-epoch history for this model.", PAGES["curves"])
    elif trend <= LOSS_STILL_FALLING:
        algo = Action("Improve the training algorithm (longer training, optimiser, schedule)", SUPPORTED,
                      f"training loss still falls by {-trend:.3f} per epoch at the end: training stopped early.",
                      PAGES["curves"])
        hyper = Action("Tune the training hyper-parameters (learning rate, batch size, epochs)", SUPPORTED,
                       "more epochs first: the loss had not converged.", PAGES["curves"])
    else:
        algo = Action("Improve the training algorithm (longer training, optimiser, schedule)", NEUTRAL,
                      f"training loss has flattened ({trend:+.3f} per epoch): longer training alone will not help; "
                      "try another optimiser or schedule.", PAGES["curves"])
        hyper = Action("Tune the training hyper-parameters (learning rate, batch size, epochs)", NEUTRAL,
                       f"training loss flat ({trend:+.3f} per epoch): try other learning rates.", PAGES["curves"])
    snr = Action("Check the signal-to-noise of the data", NEUTRAL,
                 "not measured directly: look at the worst training errors for images even a human cannot label.",
                 PAGES["worst"])
    return [bigger, algo, hyper, snr, _preprocessing_action(f), label, _imbalance_action(f)]


def _overfit_actions(e_train: float, e_test: float, e_goal: float, f: Facts) -> list[Action]:
    gap = e_test - e_train
    excess = e_test - e_goal
    actions = []
    text = "Enlarge the training set S_train"
    if f.test_slope is None:
        actions.append(Action(text, UNMEASURED, "Run the learning curves by training-set size.", PAGES["curves"]))
    elif f.test_slope <= SLOPE_HELPS:
        actions.append(Action(text, SUPPORTED, f"E_test falls by {-f.test_slope:.2%} per doubling of S_train at the "
                                               "largest size: more data should help.", PAGES["curves"]))
    elif abs(f.test_slope) <= SLOPE_FLAT:
        actions.append(Action(text, CONTRADICTED, f"the learning curve is flat ({f.test_slope:+.2%} per doubling): "
                                                  "more data of the same kind is unlikely to help.", PAGES["curves"]))
    else:
        actions.append(Action(text, NEUTRAL, f"E_test changes by {f.test_slope:+.2%} per doubling of S_train.",
                              PAGES["curves"]))
    ev = f"train/test gap E_test − E_train = {gap:+.2%} (E_test − E_goal = {excess:+.2%})"
    test_trend = history_trend(f.history, "test_loss")
    mismatch = f.domain_auc is not None and f.domain_auc >= AUC_MISMATCH
    if test_trend is None:
        verdict, why = NEUTRAL, "; no per-epoch history to tell overfitting from mismatch."
    elif test_trend > 0:
        verdict, why = SUPPORTED, f"; test loss rose by {test_trend:.3f} per epoch at the end: the network overfits."
    elif test_trend <= LOSS_STILL_FALLING:
        verdict, why = CONTRADICTED, (f"; test loss still falls by {-test_trend:.3f} per epoch at the end: the "
                                      "network is not overfitting yet (train longer first).")
    elif mismatch:
        verdict, why = NEUTRAL, (f"; test loss flat, and the splits differ (domain AUC {f.domain_auc:.3f}): the gap "
                                 "may come from the mismatch rather than from capacity.")
    else:
        verdict, why = SUPPORTED, "; test loss flat while the training error is at its floor."
    for t in ("Reduce the network size", "Regularise (tune the network's hyper-parameters: weight decay, dropout, "
                                         "augmentation)"):
        actions.append(Action(t, verdict, ev + why, PAGES["curves"]))
    best = _best_epoch(f.history)
    algo = "Choose another training algorithm (e.g. early stopping)"
    if best is None:
        actions.append(Action(algo, UNMEASURED, "No per-epoch history for this model.", PAGES["curves"]))
    elif best[0] < len(f.history) and best[2] > best[1] * 1.02:
        actions.append(Action(algo, SUPPORTED, f"test loss was lowest at epoch {best[0]} of {len(f.history)} "
                                               f"({best[1]:.3f}, last {best[2]:.3f}): early stopping would have "
                                               "helped.", PAGES["curves"]))
    else:
        actions.append(Action(algo, NEUTRAL, "test loss was lowest at the last epoch.", PAGES["curves"]))
    actions.append(_mismatch_action(f))
    return actions


def _mismatch_action(f: Facts) -> Action:
    text = "Check for a mismatch between S_train and S_test"
    parts, votes = [], []
    if f.domain_auc is not None:
        parts.append(f"domain-classifier AUC = {f.domain_auc:.3f}")
        votes.append(SUPPORTED if f.domain_auc >= AUC_MISMATCH else CONTRADICTED if f.domain_auc <= AUC_NONE
                     else NEUTRAL)
    if f.class_shift is not None:
        parts.append(f"class-frequency shift (TV) = {f.class_shift:.3f}")
        votes.append(SUPPORTED if f.class_shift >= CLASS_SHIFT_HIGH else CONTRADICTED)
    if f.pixel_shift is not None:
        parts.append(f"pixel mean shift = {f.pixel_shift:.2f} std")
        votes.append(SUPPORTED if abs(f.pixel_shift) >= PIXEL_SHIFT_HIGH else CONTRADICTED)
    if not votes:
        return Action(text, UNMEASURED, "Run the mismatch checks on the Data checks page.", PAGES["data"])
    verdict = SUPPORTED if SUPPORTED in votes else CONTRADICTED if all(v == CONTRADICTED for v in votes) else NEUTRAL
    tail = {SUPPORTED: ": the splits differ.", CONTRADICTED: ": no detectable mismatch.", NEUTRAL: "."}[verdict]
    return Action(text, verdict, ", ".join(parts) + tail, PAGES["data"])


def _best_epoch(history: Sequence[dict]) -> tuple[int, float, float] | None:
    """(epoch of the lowest test loss, that loss, the last epoch's test loss)."""
    vals = [(h.get("test_loss", float("nan")), h.get("epoch", i + 1)) for i, h in enumerate(history)]
    vals = [v for v in vals if v[0] == v[0]]
    if len(vals) < 2:
        return None
    low = min(vals)
    return int(low[1]), float(low[0]), float(vals[-1][0])
