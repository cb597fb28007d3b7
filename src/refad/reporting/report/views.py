"""The test rows of `test_scores.json` grouped by category, with each category's calibrated
image threshold: what the curves, histograms and gallery are drawn from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from refad.reporting.report.markup import is_finite


@dataclass(frozen=True)
class CategoryView:
    """The test rows of one category and its calibrated image threshold (None: none)."""

    name: str
    rows: list[dict[str, Any]]
    threshold: float | None

    @property
    def scores(self) -> np.ndarray:
        return np.array([r["score"] for r in self.rows], dtype=np.float64)

    @property
    def labels(self) -> np.ndarray:
        return np.array([int(r["label"]) for r in self.rows], dtype=np.int64)


def category_views(metrics: dict[str, Any], rows: list[dict[str, Any]]) -> list[CategoryView]:
    """Categories in metrics.json's order (then any only the rows name)."""
    names = list(metrics.get("categories") or {})
    names += sorted({r["category"] for r in rows} - set(names))
    decided = (metrics.get("decisions") or {}).get("categories") or {}
    views = []
    for name in names:
        threshold = (decided.get(name) or {}).get("threshold")
        views.append(CategoryView(name, [r for r in rows if r["category"] == name],
                                  float(threshold) if is_finite(threshold) else None))
    return views
