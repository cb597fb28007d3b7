"""The rank table every metric is computed from, and the metric formulas on it.

Why a table: AUROC, AP, F1max and AU-PRO depend on the scores only through, for each distinct
positive (anomalous) score ``u``, how many positives sit at ``u`` and how many negatives lie
strictly below / at-or-below ``u``. That table is small (one row per distinct positive score),
can be built exactly from sorted arrays (plain functions), from a compact streaming store
(exact mode) or from histograms (binned mode), and then every metric is an O(rows) formula.
Ties are therefore handled in one place, identically everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankTable:
    """Counts at each distinct positive score, ascending.

    ``region_weight[k]`` is the sum over anomalous pixels scoring exactly ``values[k]`` of
    ``1 / size of their ground-truth region`` (pixel-level tables only; ``None`` otherwise).
    """

    values: np.ndarray
    pos_count: np.ndarray
    neg_lt: np.ndarray
    neg_le: np.ndarray
    n_pos: int
    n_neg: int
    region_weight: np.ndarray | None = None
    n_regions: int = 0


def table_from_scores(
    pos: np.ndarray,
    neg: np.ndarray,
    pos_region_size: np.ndarray | None = None,
    n_regions: int = 0,
) -> RankTable:
    """Build the table exactly from in-memory score arrays (any real dtype, no NaN)."""
    pos = np.asarray(pos).ravel()
    neg_sorted = np.sort(np.asarray(neg).ravel())
    order = np.argsort(pos, kind="stable")
    pos_sorted = pos[order]
    if pos_sorted.size:
        starts = np.flatnonzero(np.r_[True, pos_sorted[1:] != pos_sorted[:-1]])
    else:
        starts = np.zeros(0, dtype=np.int64)
    values = pos_sorted[starts]
    counts = np.diff(np.r_[starts, pos_sorted.size]).astype(np.int64)
    weight = None
    if pos_region_size is not None:
        inv_size = 1.0 / np.asarray(pos_region_size, dtype=np.float64).ravel()[order]
        weight = np.add.reduceat(inv_size, starts) if starts.size else np.zeros(0)
    return RankTable(
        values=values.astype(np.float64),
        pos_count=counts,
        neg_lt=np.searchsorted(neg_sorted, values, side="left").astype(np.int64),
        neg_le=np.searchsorted(neg_sorted, values, side="right").astype(np.int64),
        n_pos=int(pos.size),
        n_neg=int(neg_sorted.size),
        region_weight=weight,
        n_regions=int(n_regions),
    )


def _both_classes(t: RankTable) -> bool:
    return t.n_pos > 0 and t.n_neg > 0


def auroc_from_table(t: RankTable) -> float:
    """P(s+ > s-) + 0.5 P(s+ = s-): the area under sklearn's ROC curve, never flipped."""
    if not _both_classes(t):
        return math.nan
    c = t.pos_count.astype(np.float64)
    # 2 * (negatives strictly below) + (negatives tied) counts each tied pair as one half.
    twice = np.dot(c, (t.neg_lt + t.neg_le).astype(np.float64))
    return float(twice / (2.0 * t.n_pos * t.n_neg))


def _tp_fp(t: RankTable) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when predicting ``score >= values[k]``."""
    below = np.cumsum(t.pos_count) - t.pos_count  # positives strictly below values[k]
    tp = (t.n_pos - below).astype(np.float64)
    fp = (t.n_neg - t.neg_lt).astype(np.float64)
    return tp, fp


def average_precision_from_table(t: RankTable) -> float:
    """sum_k (R_k - R_{k-1}) P_k over distinct thresholds, as sklearn (no interpolation)."""
    if not _both_classes(t):
        return math.nan
    tp, fp = _tp_fp(t)
    return float(np.dot(t.pos_count / t.n_pos, tp / (tp + fp)))


def f1max_from_table(t: RankTable) -> tuple[float, float]:
    """Best F1 over thresholds and the lowest threshold reaching it.

    Only distinct positive scores need checking: lowering the threshold onto a score held only
    by negatives adds false positives and no true positive, so F1 cannot rise there.
    """
    if not _both_classes(t):
        return math.nan, math.nan
    tp, fp = _tp_fp(t)
    f1 = 2.0 * tp / (tp + fp + t.n_pos)
    k = int(np.argmax(f1))  # first maximum = lowest threshold, like argmax on sklearn's curve
    return float(f1[k]), float(t.values[k])


def au_pro_from_table(t: RankTable, fpr_limit: float = 0.3) -> float:
    """Area under the exact PRO-vs-FPR curve up to ``fpr_limit``, divided by ``fpr_limit``.

    The curve (one point per distinct score, trapezoids in between, linear interpolation at the
    limit) equals a sum over anomalous pixels of weight ``1 / (|region| * n_regions)`` times a
    per-pixel ramp: 0 until FPR reaches the share of negatives scoring above the pixel, rising
    linearly across the negatives tied with it, then 1. Integrating each ramp in closed form
    gives the area without sweeping thresholds.
    """
    if t.n_regions == 0 or t.n_neg == 0 or t.region_weight is None:
        return math.nan
    n = float(t.n_neg)
    start = (t.n_neg - t.neg_le) / n  # FPR where the pixel's ramp starts (negatives above it)
    end = (t.n_neg - t.neg_lt) / n  # FPR where it ends (negatives at or above it)
    lim = float(fpr_limit)
    area = np.zeros_like(start)
    full = end <= lim
    area[full] = lim - 0.5 * (start[full] + end[full])
    cut = (~full) & (start < lim)  # ramp crosses the limit, so end > start here
    area[cut] = (lim - start[cut]) ** 2 / (2.0 * (end[cut] - start[cut]))
    weight = t.region_weight / t.n_regions
    return float(np.dot(weight, area) / lim)
