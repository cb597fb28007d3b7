"""ROC and precision-recall curves of image scores, and where a threshold sits on them.

Pure numpy, so the points a picture draws come from the same rules as `metrics.json`
(ties enter together; AP is the step sum) without any plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from refad.pipeline.decision import exceeds


@dataclass(frozen=True)
class Curves:
    """ROC and precision-recall points of image scores, one per distinct score."""

    fpr: np.ndarray
    tpr: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    auroc: float
    ap: float


def image_curves(scores: Sequence[float], labels: Sequence[int]) -> Curves | None:
    """The curves for `anomalous = score >= s` over every distinct score `s`: images with
    equal scores enter together (one point per group, as sklearn), so ties never draw a
    staircase that no threshold can reach. None without both good and defective images.

    AUROC is the trapezoid area (ties count one half); AP is sklearn's step sum
    sum_k (R_k - R_{k-1}) P_k, so both match `metrics.json`.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # last index of each tie group
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    tpr, fpr = np.r_[0.0, tp / n_pos], np.r_[0.0, fp / n_neg]
    recall, precision = tp / n_pos, tp / (tp + fp)
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return Curves(fpr, tpr, np.r_[0.0, recall], np.r_[1.0, precision], auroc, ap)


@dataclass(frozen=True)
class OperatingPoint:
    """Where `anomalous = score > threshold` sits on the curves."""

    fpr: float
    tpr: float
    precision: float  # NaN when nothing is flagged


def operating_point(
    scores: Sequence[float], labels: Sequence[int], threshold: float
) -> OperatingPoint:
    """The calibrated threshold's point (same rule as the decision table: score > threshold)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    flagged = exceeds(s, threshold)
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return OperatingPoint(
        fp / n_neg if n_neg else math.nan,
        tp / n_pos if n_pos else math.nan,
        tp / (tp + fp) if tp + fp else math.nan,
    )
