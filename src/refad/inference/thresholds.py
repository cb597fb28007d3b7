"""Which calibrated values decide an image of a given category (torch-free).

A unit's calibration holds global values and, under `categories`, each category's own
(`refad.inference.calibration`). An image of a known category is decided by its category's
threshold ("category:<name>"); an image of unknown category by the global one ("global"); a
per-category run's unit is its category. Runs calibrated before per-category thresholds existed
have only the global values. Shared by `refad test`, `refad predict`, the server and the
exported models' `Inferencer`, so every path decides an image the same way.
"""

from __future__ import annotations

import math
from typing import Any

from refad.runs.layout import UNIFIED


def calibration_for(
    calibration: dict[str, Any] | None, unit: str, category: str | None
) -> dict[str, Any]:
    """The values that decide an image of `category` scored by `unit`, flat (no
    `categories`), with `source` naming whose threshold it is (None: no threshold)."""
    calibration = dict(calibration or {})
    per_category = calibration.pop("categories", None) or {}
    values = dict(calibration)
    own = per_category.get(category) if category is not None else None
    if own:
        values.update({k: v for k, v in own.items() if v is not None})
    if not _finite(values.get("threshold")):
        return {**values, "threshold": None, "source": None}
    if own and _finite(own.get("threshold")):
        source = f"category:{category}"
    elif unit != UNIFIED:
        source = f"category:{unit}"
    else:
        source = "global"
    return {**values, "source": source, "images_source": calibration.get("source")}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def known_categories(calibration: dict[str, Any] | None) -> list[str]:
    """The categories with their own calibrated values (empty for older runs)."""
    return sorted((calibration or {}).get("categories") or {})
