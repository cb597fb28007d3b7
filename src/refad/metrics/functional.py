"""Plain metric functions on whole in-memory arrays (same core as the accumulator).

They work at the input's own precision (float64 stays float64) on host arrays; tensors are
copied to the host. For large pixel sets use MetricAccumulator, which streams.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from refad.errors import DataError

from .accumulator import binary_labels, finite_scores
from .backend import to_host
from .ranks import (
    RankTable,
    au_pro_from_table,
    auroc_from_table,
    average_precision_from_table,
    f1max_from_table,
    table_from_scores,
)
from .regions import region_sizes


class F1Max(NamedTuple):
    """Best F1 on the precision-recall curve and the lowest threshold (score >= t) reaching it."""

    f1: float
    threshold: float


def _table(scores: Any, labels: Any, what: str) -> RankTable:
    s = finite_scores(scores, what)
    y = binary_labels(labels, what)
    if s.size != y.size:
        raise DataError(f"{what}: {s.size} scores but {y.size} labels")
    return table_from_scores(s[y], s[~y])


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (ties count one half, as sklearn); NaN without both classes."""
    return auroc_from_table(_table(scores, labels, "auroc"))


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision with sklearn's step definition; NaN without both classes."""
    return average_precision_from_table(_table(scores, labels, "average_precision"))


def f1_max(scores: Any, labels: Any) -> F1Max:
    """Maximum F1 over thresholds and its threshold; (NaN, NaN) without both classes."""
    return F1Max(*f1max_from_table(_table(scores, labels, "f1_max")))


def au_pro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Exact AU-PRO of (N,H,W) maps against masks (bool, or numeric binarised at > 0.5).

    Regions are 8-connected per image; the PRO-vs-FPR curve is integrated to ``fpr_limit`` and
    divided by it, so a perfect map scores 1. NaN when there is no region or no normal pixel.
    """
    m = np.asarray(to_host(maps))
    g = to_host(masks)
    g = g if g.dtype == np.bool_ else g > 0.5
    if m.ndim == 2:
        m, g = m[None], g[None]
    if m.shape != g.shape or m.ndim != 3:
        raise DataError(f"au_pro: maps {m.shape} and masks {g.shape} must both be (N, H, W)")
    if not np.issubdtype(m.dtype, np.floating):
        m = m.astype(np.float64)
    if np.isnan(m).any():
        raise DataError("au_pro: anomaly maps contain NaN")
    if not 0.0 < fpr_limit <= 1.0:
        raise DataError(f"au_pro: fpr_limit must be in (0, 1], got {fpr_limit}")
    sizes, n_regions = region_sizes(g)
    t = table_from_scores(m[g], m[~g], pos_region_size=sizes, n_regions=n_regions)
    return au_pro_from_table(t, fpr_limit)
