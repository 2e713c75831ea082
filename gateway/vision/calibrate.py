"""Threshold arithmetic over similarity scores: pure functions, no models, no files.

Conventions: a comparison "matches" when its score is at or above the threshold; a rate
threshold is the lowest value whose rate *on the scores given* does not exceed the target.
Set and measured on the same scores, that rate is optimistic: on scores not seen the rate at
that threshold is higher, about (k + 1) / (n + 1) for k allowed of n (twice the target with
n = 1/target). The more scores, the closer it comes to the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import overload

import numpy as np

# The gallery's scores are float32: 0.57 - 0.55 comes out 0.0199999, and a score or a lead
# exactly at a threshold must count as "at or above" it (the margin is at least 1e-3 by
# config, so a tie never is).
SCORE_EPS = 1e-6


@overload
def at_or_above(score: float, threshold: float) -> bool: ...


@overload
def at_or_above(score: np.ndarray, threshold: float) -> np.ndarray: ...


def at_or_above(score: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """The counter's test of a score or a lead against a threshold, and so calibration's:
    a rate measured with another test is not the rate the counter gives."""
    return score >= threshold - SCORE_EPS


def threshold_at_rate(impostor: np.ndarray, rate: float) -> float | None:
    """Lowest threshold at which at most ``rate`` of the impostor scores match.

    None with fewer than 1/rate scores (none at all included): one false match would already
    be more than ``rate``, so the data cannot show a rate that small, and a threshold just
    above the highest score would be reported as meeting a rate nobody measured.
    """
    allowed = math.floor(rate * impostor.size + 1e-9)
    if allowed == 0:
        return None
    if allowed >= impostor.size:
        return float(impostor.min())
    ranked = np.sort(impostor)[::-1]
    # the counter takes a score within SCORE_EPS below a threshold as at it: the threshold
    # must clear the first score it keeps out by more than that
    return float(ranked[allowed]) + 2 * SCORE_EPS


def scores_needed(rate: float) -> int:
    """How many impostor scores (searches, pairs) it takes to measure ``rate`` at all."""
    return math.ceil(1 / rate - 1e-6)


def best_accuracy_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold with the highest pair accuracy (midway between neighbouring scores)."""
    order = np.argsort(scores)
    s, y = scores[order].astype(np.float64), same[order]
    # threshold just above s[i]: pairs 0..i rejected, i+1.. accepted
    genuine_rejected = np.cumsum(y)
    impostor_rejected = np.cumsum(~y)
    correct = impostor_rejected + (y.sum() - genuine_rejected)
    correct = np.concatenate([[y.sum()], correct])
    # a threshold falls between two different scores: pairs that score the same go one way
    between = np.concatenate([[True], s[1:] > s[:-1], [True]])
    best = int(np.argmax(np.where(between, correct, -1)))
    if best == 0:
        return float(s[0] - 1e-6)
    if best == len(s):
        return float(s[-1] + 1e-6)
    return float((s[best - 1] + s[best]) / 2)


@dataclass(frozen=True)
class FoldResult:
    accuracy: float
    threshold: float


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> list[FoldResult]:
    """Per fold: accuracy on it at the threshold chosen on all the other folds."""
    results = []
    for fold in np.unique(folds):
        train = folds != fold
        t = best_accuracy_threshold(scores[train], same[train])
        test = ~train
        accuracy = float(np.mean((scores[test] >= t) == same[test]))
        results.append(FoldResult(accuracy, t))
    return results


def round_up(value: float, step: float = 0.01) -> float:
    """Round a threshold up to ``step`` (never down: a rounded threshold stays as safe)."""
    return round(math.ceil(value / step - 1e-9) * step, 10)


def beyond_calibration(elders: int, calibrated_for: int) -> str | None:
    """Why the thresholds no longer fit the gallery, or None while they do.

    A stranger is compared with every enrolled elder, so the false-identification rate grows
    roughly in proportion to the number of elders: thresholds set for 1,000 elders let about
    twice as many strangers through with 2,000.
    """
    if elders <= calibrated_for:
        return None
    return (
        f"{elders} elders enrolled but the thresholds are calibrated for {calibrated_for}: "
        f"strangers may be taken for an elder about {elders / calibrated_for:.1f}x as often; "
        f"recalibrate with `gateway eval --faces DIR --n {elders}` on a labelled folder "
        "(docs/faces.md) and set [vision.decision]"
    )
