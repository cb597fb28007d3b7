"""Per-sample results of multi-view datasets (Real-IAD): one part seen by five cameras.

Real-IAD's paper reports image-level figures per view and per sample; a line decides parts,
not pictures. Here a sample is the folder holding a part's views, it is anomalous when any
of its views is, and its score is the maximum of its views' scores (so it is flagged exactly
when one of its views is flagged at the same threshold). Built from the per-view scores that
evaluation keeps anyway (a few numbers per image), never from the maps.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from refad.metrics import MetricAccumulator, decision_metrics

SAMPLE_RULE = ("a sample (the folder of one part's views) is anomalous if any view is; its "
               "score is the maximum over its views")
SAMPLE_METRICS = ("i_auroc", "i_ap", "i_f1max")


def sample_scores(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per category, (scores, labels) of its samples: max over views, any view defective."""
    grouped: dict[str, dict[str, list[tuple[float, int]]]] = defaultdict(dict)
    for row in rows:
        folder = os.path.dirname(str(row["image"]))
        grouped[row["category"]].setdefault(folder, []).append((row["score"], row["label"]))
    out = {}
    for category, samples in grouped.items():
        scores = np.array([max(s for s, _ in views) for views in samples.values()])
        labels = np.array([max(y for _, y in views) for views in samples.values()])
        out[category] = (scores, labels)
    return out


def _mean(values: Iterable[float | None]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def sample_results(
    rows: Iterable[Mapping[str, Any]], thresholds: Mapping[str, float | None]
) -> dict[str, Any]:
    """Per category: sample counts, I-AUROC / I-AP / I-F1max over samples and, where the
    category has a calibrated threshold, the decisions on samples; plus their means."""
    per: dict[str, dict[str, Any]] = {}
    for category, (scores, labels) in sorted(sample_scores(rows).items()):
        acc = MetricAccumulator()
        acc.update(scores, labels)
        metrics = acc.compute()
        row: dict[str, Any] = {"samples": int(scores.size), "defective": int(labels.sum()),
                               **{k: metrics[k] for k in SAMPLE_METRICS}}
        threshold = thresholds.get(category)
        if threshold is not None:
            decided = decision_metrics(scores, labels, threshold)
            row.update({k: decided[k] for k in ("false_alarm_rate", "miss_rate", "f1")})
        per[category] = row
    names = (*SAMPLE_METRICS, "false_alarm_rate", "miss_rate", "f1")
    return {"rule": SAMPLE_RULE, "categories": per,
            "mean": {k: _mean(r.get(k) for r in per.values()) for k in names}}
