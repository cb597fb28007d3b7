"""Decision metrics at a fixed threshold: what a line sees when the model decides.

``anomalous = score > threshold`` (`refad.pipeline.decision`, the rule of every path). Rates
are fractions; a rate whose denominator is empty (no good, no defective, or no flagged image) is
NaN, never a made-up 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from refad.pipeline.decision import exceeds

DECISION_NAMES = ("false_alarm_rate", "miss_rate", "precision", "recall", "f1")


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def decision_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Counts (tp, fp, tn, fn) and the rates of `DECISION_NAMES` at `threshold`.

    `labels`: 1 for defective, 0 for good images."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    flagged = exceeds(scores, threshold)
    tp = int((flagged & labels).sum())
    fp = int((flagged & ~labels).sum())
    fn = int((~flagged & labels).sum())
    tn = int((~flagged & ~labels).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn) if tp + fn else math.nan
    return {
        "threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "false_alarm_rate": _ratio(fp, fp + tn), "miss_rate": _ratio(fn, tp + fn),
        "precision": precision, "recall": recall, "f1": f1,
    }


def mean_decisions(
    per_category: Mapping[str, Mapping[str, float]], extra: Iterable[str] = ()
) -> dict[str, float]:
    """Each rate's mean over the categories where it is defined (NaN where none is); `extra`
    names further values to average where categories have them (SegF1, area ratio)."""
    def mean(values: Iterable[float | None]) -> float:
        kept = [v for v in values if v is not None and not math.isnan(v)]
        return float(np.mean(kept)) if kept else math.nan

    names = (*DECISION_NAMES, *extra)
    return {name: mean(m.get(name) for m in per_category.values()) for name in names}
