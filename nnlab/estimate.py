"""Accuracy before the full pass ends: a stratified first sample, the order of a streamed pass, Wilson intervals.

An evaluation pass (:func:`nnlab.jobs.kinds.ensure_evaluation`) runs a stratified sample of the split first
(:func:`stratified_sample`: a few hundred images, each class in its share, chosen with a fixed seed), so the first
accuracy is shown seconds after the pass starts, then the rest of the split in a seeded random order
(:func:`stream_order`), so the running accuracy over the images done so far estimates the whole split's at every
step. :func:`wilson_interval` is the 95 % interval shown beside each estimate.
"""

from __future__ import annotations

import math

import numpy as np

FIRST_SAMPLE = 300  # images of the stratified first sample (≥ 200, so the 99.5 % fidelity gate allows one flip)
SEED = 0
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (95 % by default); ``(0, 1)`` for ``n = 0``.

    ``(p̂ + z²/2n ± z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)``: unlike the normal approximation it stays inside
    [0, 1] and keeps its coverage near 0 % and 100 % accuracy.
    """
    k, n = int(successes), int(n)
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"successes must lie in 0..{n}, got {k}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def stratified_sample(labels: np.ndarray, n: int = FIRST_SAMPLE, seed: int = SEED) -> np.ndarray:
    """``n`` indices of ``labels`` (all of them when there are fewer), each class in its share of the split.

    Proportional allocation by largest remainder (a class's count differs from ``n × its share`` by less than one),
    the images of each class drawn without replacement by a seeded generator. Returned sorted.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if n >= total:
        return np.arange(total)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n / total)
    take = np.floor(quota).astype(int)
    short = n - int(take.sum())
    if short:  # the largest remainders get one more (ties: the larger class first, then the lower class id)
        order = np.lexsort((classes, -counts, -(quota - take)))
        take[order[:short]] += 1
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), size=int(t), replace=False)
             for c, t in zip(classes, take) if t]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)


def stream_order(labels: np.ndarray, first: int = FIRST_SAMPLE, seed: int = SEED) -> tuple[np.ndarray, int]:
    """The order a streamed pass visits a split in, and how many of its first images are the stratified sample.

    The stratified sample first, then every other image in a seeded random order: the images done at any point
    are the sample plus a uniform random subset of the rest, so their accuracy estimates the whole split's.
    """
    sample = stratified_sample(labels, first, seed)
    rest = np.setdiff1d(np.arange(len(labels)), sample, assume_unique=True)
    rest = np.random.default_rng(seed + 1).permutation(rest)
    return np.concatenate([sample, rest]).astype(np.int64), len(sample)
