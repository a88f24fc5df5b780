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
from nnlab.i18n import N_, _, num

PAGES = {
    "goal": "pages/diagnose_goal.py",
    "classes": "pages/diagnose_classes.py",
    "worst": "pages/diagnose_worst.py",
    "data": "pages/diagnose_data.py",
    "curves": "pages/diagnose_curves.py",
}

SUPPORTED, CONTRADICTED, NEUTRAL, UNMEASURED = "supported", "contradicted", "neutral", "not measured"
# Verdicts and regimes are identifiers (pages and tests compare them); these are their words for the reader.
VERDICT_LABELS = {SUPPORTED: N_("supported"), CONTRADICTED: N_("contradicted"), NEUTRAL: N_("neutral"),
                  UNMEASURED: N_("not measured")}
GOAL_MET, UNDERFITTING, OVERFITTING = "goal met", "underfitting", "overfitting or mismatch"
REGIME_LABELS = {GOAL_MET: N_("goal met"), UNDERFITTING: N_("underfitting"), OVERFITTING: N_("overfitting or mismatch")}

SLOPE_HELPS = -0.005  # E_test change per doubling of S_train below which more data clearly helps
SLOPE_FLAT = 0.002  # |change| below which the curve is flat
LOSS_STILL_FALLING = -0.01  # train loss change per epoch, last epochs
IMBALANCE_HIGH, IMBALANCE_LOW = 3.0, 1.5
AUC_MISMATCH, AUC_NONE = 0.6, 0.55
CLASS_SHIFT_HIGH = 0.05  # total variation distance of class frequencies
PIXEL_SHIFT_HIGH = 0.25  # |mean shift| in training standard deviations


def verdict_label(verdict: str) -> str:
    """A verdict in the current language ("supported" → "подтверждается")."""
    return _(VERDICT_LABELS[verdict]) if verdict in VERDICT_LABELS else verdict


def regime_label(regime: str) -> str:
    """A regime in the current language ("underfitting" → "недообучение")."""
    return _(REGIME_LABELS[regime]) if regime in REGIME_LABELS else regime


def _pct(x: float, spec: str = ".2%") -> str:
    return num(x, spec)


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
            notes.append(_("E_test − E_goal = {diff} is within two standard errors ({se}) of the test error measured "
                           "on {n} images: the test set cannot tell these apart.").format(
                diff=_pct(e_test - e_goal, "+.2%"), se="±" + _pct(2 * se), n=num(n_test, ",d")))
    if e_test <= e_goal:
        extra = (" " + _("The training error is above the test error, which is unusual (dropout and augmentation "
                         "are active only while training; train error here is measured in eval mode).")
                 if e_train > e_test else "")
        head = _("E_test = {e_test} ≤ E_goal = {e_goal}: the goal is met.").format(
            e_test=_pct(e_test), e_goal=_pct(e_goal))
        return Diagnosis(GOAL_MET, head + extra, e_train, e_test, e_goal, [], notes)
    if e_train > e_goal:
        head = _("E_train = {e_train} > E_goal = {e_goal}: the network does not reach the goal even on its training "
                 "set (underfitting, or a data problem). Work on the training error first.").format(
            e_train=_pct(e_train), e_goal=_pct(e_goal))
        if e_test - e_train > max(0.02, 0.5 * (e_train - e_goal)):
            notes.append(_("The train/test gap is also large ({gap}): once the training error is down, expect the "
                           "overfitting actions to matter too.").format(gap=_pct(e_test - e_train, "+.2%")))
        actions = _underfit_actions(e_train, e_goal, facts)
        return Diagnosis(UNDERFITTING, head, e_train, e_test, e_goal, actions, notes)
    head = _("E_train = {e_train} ≤ E_goal = {e_goal} < E_test = {e_test}: the network fits its training set but "
             "does not generalise (overfitting, or a train/test mismatch).").format(
        e_train=_pct(e_train), e_goal=_pct(e_goal), e_test=_pct(e_test))
    return Diagnosis(OVERFITTING, head, e_train, e_test, e_goal,
                     _overfit_actions(e_train, e_test, e_goal, facts), notes)


def _common_notes(e_train: float, e_test: float, f: Facts) -> list[str]:
    notes = []
    if f.duplicates:
        notes.append(_("{n} test samples have a near-identical training sample (leakage): E_test may be "
                       "optimistic.").format(n=f.duplicates))
    return notes


# The lecture's actions (lecture 4); the Russian catalog uses the lecture's own wording.
A_BIGGER = N_("Increase the network size")
A_ALGO = N_("Improve the training algorithm (longer training, optimiser, schedule)")
A_HYPER = N_("Tune the training hyper-parameters (learning rate, batch size, epochs)")
A_SNR = N_("Check the signal-to-noise of the data")
A_PREPROCESSING = N_("Check the preprocessing (input statistics train vs test)")
A_LABELS = N_("Check for unreliable reference labels")
A_IMBALANCE = N_("Check for an imbalanced sample")
A_MORE_DATA = N_("Enlarge the training set S_train")
A_SMALLER = N_("Reduce the network size")
A_REGULARISE = N_("Regularise (tune the network's hyper-parameters: weight decay, dropout, augmentation)")
A_ALGO_OVERFIT = N_("Choose another training algorithm (e.g. early stopping)")
A_MISMATCH = N_("Check for a mismatch between S_train and S_test")


def _label_action(e_train: float, f: Facts) -> Action:
    text = _(A_LABELS)
    if f.label_issue_fraction is None:
        return Action(text, UNMEASURED, _("Run the label-error check on the Data checks page."), PAGES["data"])
    frac = f.label_issue_fraction
    ev = _("confident learning flags {n} training samples ({frac}); E_train is {e_train}").format(
        n=f.label_issues or 0, frac=_pct(frac), e_train=_pct(e_train))
    if frac >= max(0.01, 0.5 * e_train):
        return Action(text, SUPPORTED, ev + _(": suspected label errors explain a large share of the training "
                                              "error."), PAGES["data"])
    if frac < 0.25 * e_train:
        return Action(text, CONTRADICTED, ev + _(": too few to explain the training error."), PAGES["data"])
    return Action(text, NEUTRAL, ev + ".", PAGES["data"])


def _imbalance_action(f: Facts) -> Action:
    text = _(A_IMBALANCE)
    if f.imbalance_ratio is None:
        return Action(text, UNMEASURED, _("Class counts not measured."), PAGES["data"])
    r = f.imbalance_ratio
    ev = _("largest/smallest class = {ratio}").format(ratio=num(r, ".2f"))
    if r >= IMBALANCE_HIGH:
        return Action(text, SUPPORTED, ev + _(" (≥ {limit}): reweight or resample.").format(
            limit=num(IMBALANCE_HIGH, "g")), PAGES["data"])
    if r <= IMBALANCE_LOW:
        return Action(text, CONTRADICTED, ev + _(" (≤ {limit}): the classes are balanced.").format(
            limit=num(IMBALANCE_LOW, "g")), PAGES["data"])
    return Action(text, NEUTRAL, ev + _(": mild imbalance."), PAGES["data"])


def _preprocessing_action(f: Facts) -> Action:
    text = _(A_PREPROCESSING)
    if f.pixel_shift is None:
        return Action(text, UNMEASURED, _("Pixel statistics not measured."), PAGES["data"])
    ev = _("largest per-channel mean shift test vs train = {shift} training std").format(
        shift=num(f.pixel_shift, ".2f"))
    if abs(f.pixel_shift) >= PIXEL_SHIFT_HIGH:
        return Action(text, SUPPORTED, ev + _(" (≥ {limit}): the splits are preprocessed differently.").format(
            limit=num(PIXEL_SHIFT_HIGH, "g")), PAGES["data"])
    return Action(text, CONTRADICTED, ev + _(": the input statistics agree."), PAGES["data"])


def _underfit_actions(e_train: float, e_goal: float, f: Facts) -> list[Action]:
    gap = e_train - e_goal
    trend = history_trend(f.history, "train_loss")
    label = _label_action(e_train, f)
    if label.verdict == SUPPORTED:
        bigger = Action(_(A_BIGGER), CONTRADICTED,
                        _("E_train − E_goal = {gap}, but suspected label errors ({frac}) account for much of it: a "
                          "larger network would learn the wrong labels.").format(
                            gap=_pct(gap, "+.2%"), frac=_pct(f.label_issue_fraction)), PAGES["data"])
    else:
        bigger = Action(_(A_BIGGER), SUPPORTED,
                        _("E_train − E_goal = {gap}: the network does not fit its training set.").format(
                            gap=_pct(gap, "+.2%")), PAGES["curves"])
    if trend is None:
        no_history = _("No per-epoch history for this model.")
        algo = Action(_(A_ALGO), UNMEASURED, no_history, PAGES["curves"])
        hyper = Action(_(A_HYPER), UNMEASURED, no_history, PAGES["curves"])
    elif trend <= LOSS_STILL_FALLING:
        algo = Action(_(A_ALGO), SUPPORTED,
                      _("training loss still falls by {drop} per epoch at the end: training stopped early.").format(
                          drop=num(-trend, ".3f")), PAGES["curves"])
        hyper = Action(_(A_HYPER), SUPPORTED, _("more epochs first: the loss had not converged."), PAGES["curves"])
    else:
        algo = Action(_(A_ALGO), NEUTRAL,
                      _("training loss has flattened ({trend} per epoch): longer training alone will not help; try "
                        "another optimiser or schedule.").format(trend=num(trend, "+.3f")), PAGES["curves"])
        hyper = Action(_(A_HYPER), NEUTRAL,
                       _("training loss flat ({trend} per epoch): try other learning rates.").format(
                           trend=num(trend, "+.3f")), PAGES["curves"])
    snr = Action(_(A_SNR), NEUTRAL,
                 _("not measured directly: look at the worst training errors for images even a human cannot "
                   "label."), PAGES["worst"])
    return [bigger, algo, hyper, snr, _preprocessing_action(f), label, _imbalance_action(f)]


def _overfit_actions(e_train: float, e_test: float, e_goal: float, f: Facts) -> list[Action]:
    gap = e_test - e_train
    excess = e_test - e_goal
    actions = []
    text = _(A_MORE_DATA)
    if f.test_slope is None:
        actions.append(Action(text, UNMEASURED, _("Run the learning curves by training-set size."), PAGES["curves"]))
    elif f.test_slope <= SLOPE_HELPS:
        actions.append(Action(text, SUPPORTED, _("E_test falls by {drop} per doubling of S_train at the largest "
                                                 "size: more data should help.").format(
            drop=_pct(-f.test_slope)), PAGES["curves"]))
    elif abs(f.test_slope) <= SLOPE_FLAT:
        actions.append(Action(text, CONTRADICTED, _("the learning curve is flat ({slope} per doubling): more data of "
                                                    "the same kind is unlikely to help.").format(
            slope=_pct(f.test_slope, "+.2%")), PAGES["curves"]))
    else:
        actions.append(Action(text, NEUTRAL, _("E_test changes by {slope} per doubling of S_train.").format(
            slope=_pct(f.test_slope, "+.2%")), PAGES["curves"]))
    ev = _("train/test gap E_test − E_train = {gap} (E_test − E_goal = {excess})").format(
        gap=_pct(gap, "+.2%"), excess=_pct(excess, "+.2%"))
    test_trend = history_trend(f.history, "test_loss")
    mismatch = f.domain_auc is not None and f.domain_auc >= AUC_MISMATCH
    if test_trend is None:
        verdict, why = NEUTRAL, _("; no per-epoch history to tell overfitting from mismatch.")
    elif test_trend > 0:
        verdict, why = SUPPORTED, _("; test loss rose by {rise} per epoch at the end: the network overfits.").format(
            rise=num(test_trend, ".3f"))
    elif test_trend <= LOSS_STILL_FALLING:
        verdict, why = CONTRADICTED, _("; test loss still falls by {drop} per epoch at the end: the network is not "
                                       "overfitting yet (train longer first).").format(drop=num(-test_trend, ".3f"))
    elif mismatch:
        verdict, why = NEUTRAL, _("; test loss flat, and the splits differ (domain AUC {auc}): the gap may come from "
                                  "the mismatch rather than from capacity.").format(auc=num(f.domain_auc, ".3f"))
    else:
        verdict, why = SUPPORTED, _("; test loss flat while the training error is at its floor.")
    for t in (A_SMALLER, A_REGULARISE):
        actions.append(Action(_(t), verdict, ev + why, PAGES["curves"]))
    best = _best_epoch(f.history)
    algo = _(A_ALGO_OVERFIT)
    if best is None:
        actions.append(Action(algo, UNMEASURED, _("No per-epoch history for this model."), PAGES["curves"]))
    elif best[0] < len(f.history) and best[2] > best[1] * 1.02:
        actions.append(Action(algo, SUPPORTED, _("test loss was lowest at epoch {best} of {epochs} ({low}, last "
                                                 "{last}): early stopping would have helped.").format(
            best=best[0], epochs=len(f.history), low=num(best[1], ".3f"), last=num(best[2], ".3f")),
            PAGES["curves"]))
    else:
        actions.append(Action(algo, NEUTRAL, _("test loss was lowest at the last epoch."), PAGES["curves"]))
    actions.append(_mismatch_action(f))
    return actions


def _mismatch_action(f: Facts) -> Action:
    text = _(A_MISMATCH)
    parts, votes = [], []
    if f.domain_auc is not None:
        parts.append(_("domain-classifier AUC = {auc}").format(auc=num(f.domain_auc, ".3f")))
        votes.append(SUPPORTED if f.domain_auc >= AUC_MISMATCH else CONTRADICTED if f.domain_auc <= AUC_NONE
                     else NEUTRAL)
    if f.class_shift is not None:
        parts.append(_("class-frequency shift (TV) = {shift}").format(shift=num(f.class_shift, ".3f")))
        votes.append(SUPPORTED if f.class_shift >= CLASS_SHIFT_HIGH else CONTRADICTED)
    if f.pixel_shift is not None:
        parts.append(_("pixel mean shift = {shift} std").format(shift=num(f.pixel_shift, ".2f")))
        votes.append(SUPPORTED if abs(f.pixel_shift) >= PIXEL_SHIFT_HIGH else CONTRADICTED)
    if not votes:
        return Action(text, UNMEASURED, _("Run the mismatch checks on the Data checks page."), PAGES["data"])
    verdict = SUPPORTED if SUPPORTED in votes else CONTRADICTED if all(v == CONTRADICTED for v in votes) else NEUTRAL
    tail = {SUPPORTED: _(": the splits differ."), CONTRADICTED: _(": no detectable mismatch."), NEUTRAL: "."}[verdict]
    return Action(text, verdict, ", ".join(parts) + tail, PAGES["data"])


def _best_epoch(history: Sequence[dict]) -> tuple[int, float, float] | None:
    """(epoch of the lowest test loss, that loss, the last epoch's test loss)."""
    vals = [(h.get("test_loss", float("nan")), h.get("epoch", i + 1)) for i, h in enumerate(history)]
    vals = [v for v in vals if v[0] == v[0]]
    if len(vals) < 2:
        return None
    low = min(vals)
    return int(low[1]), float(low[0]), float(vals[-1][0])
