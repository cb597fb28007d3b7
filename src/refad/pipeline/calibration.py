"""Calibration, typed: the values set on normal images that decide and draw an image.

A unit's `Calibration` holds its global values (images of unknown category) and each
category's own. `for_category(name)` gives the `Thresholds` that apply to one image: the
category's own values where it has them, else the unit's, and `source` saying whose threshold
decides: "category:<name>" (its own, or a per-category unit's), "global", or None (no
threshold: scores only). A caller's threshold replaces it through `Thresholds.overridden`.

On disk the record keeps its format (checkpoint.json's `calibration`, refad-deploy.json's
`units.<u>.calibration` and `categories`): `from_record` reads one, `to_record` writes it.
The record's own `source` key names which normal images set the values ("held_out" or
"training"); here that is `images_source`, never confused with whose threshold decides. Its
`mask_rule` and `mask_peak_fraction` say how defect masks are drawn
(`refad.pipeline.defects`); a record without them (written before the rule) keeps the old
"normal_max" rule, so its masks do not change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from refad.pipeline.defects import defect_level

VALUE_KEYS = ("threshold", "pixel_threshold", "map_floor", "map_ceiling")
STAT_KEYS = ("images", "image_score_median", "image_score_max")


def _number(value: Any) -> float | None:
    """A recorded number as a float; None when absent or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Values:
    """One set of calibrated values, from one set of normal images (a unit's or a category's).
    None: not recorded. Statistics the record holds beside them are kept for writing back."""

    threshold: float | None = None
    pixel_threshold: float | None = None
    map_floor: float | None = None
    map_ceiling: float | None = None
    stats: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Values:
        stats = {k: record[k] for k in STAT_KEYS if k in record}
        return cls(*(_number(record.get(k)) for k in VALUE_KEYS), MappingProxyType(stats))

    def to_record(self) -> dict[str, Any]:
        """The statistics, then the values (checkpoint.json's order); absent values are left
        out."""
        values = {k: getattr(self, k) for k in VALUE_KEYS if getattr(self, k) is not None}
        return {**self.stats, **values}

    def over(self, base: Values) -> Values:
        """These values where recorded, `base`'s elsewhere (a category over its unit)."""
        return Values(*(getattr(self, k) if getattr(self, k) is not None else getattr(base, k)
                        for k in VALUE_KEYS), self.stats)


@dataclass(frozen=True)
class Thresholds:
    """What applies to one image: the threshold that decides it and whose it is, the pixel
    threshold of its defect mask, and the colour range of its heatmap (None: not calibrated).

    `pixel_threshold` is the defect level: the calibrated pixel threshold, else `map_ceiling`
    (the largest pixel seen on the normal images: "worse than any normal pixel")."""

    threshold: float | None = None
    source: str | None = None  # "category:<c>", "global", an override's name; None: no threshold
    pixel_threshold: float | None = None
    map_floor: float | None = None
    map_ceiling: float | None = None
    images_source: str | None = None  # which normal images set the threshold ("held_out", ...)
    mask_rule: str = "normal_max"  # how the defect mask is drawn (refad.pipeline.defects)
    mask_peak_fraction: float | None = None

    def defect_level(self, peak: float) -> float | None:
        """The level above which a map peaking at `peak` has its defect pixels (None: no
        pixel threshold, no mask)."""
        return defect_level(peak, self.pixel_threshold, self.map_floor, self.mask_rule,
                            self.mask_peak_fraction)

    def overridden(self, threshold: float, source: str) -> Thresholds:
        """The same values decided at a caller's `threshold`, named `source`."""
        return replace(self, threshold=float(threshold), source=source)

    def colour_range(self, raw_map: np.ndarray) -> tuple[float, float]:
        """(floor, ceiling) of the heatmap's colours: the calibrated range (comparable between
        images), else the map's own minimum and maximum (not calibrated)."""
        floor = self.map_floor if self.map_floor is not None else float(np.min(raw_map))
        ceiling = self.map_ceiling if self.map_ceiling is not None else float(np.max(raw_map))
        return floor, ceiling


@dataclass(frozen=True)
class Calibration:
    """A unit's calibration. `unit_category`: the category a per-category unit scores (None
    for a unified unit), whose threshold its global one is."""

    values: Values = field(default_factory=Values)
    categories: Mapping[str, Values] = field(default_factory=lambda: MappingProxyType({}))
    images_source: str | None = None
    quantile: float | None = None
    rule: str | None = None
    unit_category: str | None = None
    mask_rule: str | None = None  # None: recorded before the rule existed ("normal_max")
    mask_peak_fraction: float | None = None

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any] | None, unit_category: str | None = None
    ) -> Calibration:
        """Read a stored record (checked by its reader: `refad.runs.recorded`); None or an empty
        record is a unit without calibration (an imported run)."""
        record = record or {}
        categories = {str(c): Values.from_record(v)
                      for c, v in (record.get("categories") or {}).items()}
        source = record.get("source")
        rule = record.get("threshold_rule")
        mask_rule = record.get("mask_rule")
        return cls(Values.from_record(record), MappingProxyType(categories),
                   source if isinstance(source, str) else None,
                   _number(record.get("threshold_quantile")),
                   rule if isinstance(rule, str) else None, unit_category,
                   mask_rule if isinstance(mask_rule, str) else None,
                   _number(record.get("mask_peak_fraction")))

    def to_record(self) -> dict[str, Any]:
        """The record as checkpoint.json holds it (the format `from_record` reads)."""
        head = {"source": self.images_source, "threshold_quantile": self.quantile,
                "threshold_rule": self.rule, "mask_rule": self.mask_rule,
                "mask_peak_fraction": self.mask_peak_fraction}
        return {**{k: v for k, v in head.items() if v is not None}, **self.values.to_record(),
                "categories": {c: v.to_record() for c, v in self.categories.items()}}

    @property
    def known_categories(self) -> list[str]:
        """The categories with values of their own (empty for runs calibrated before
        per-category thresholds existed)."""
        return sorted(self.categories)

    @property
    def threshold(self) -> float | None:
        """The unit's own threshold: a unified unit's global one, a per-category unit's."""
        return self.values.threshold

    def category_thresholds(self) -> dict[str, float]:
        """Each category's own threshold (categories recorded without one are left out)."""
        return {c: v.threshold for c, v in self.categories.items() if v.threshold is not None}

    def for_category(self, category: str | None) -> Thresholds:
        """The values that decide and draw an image of `category` (None: unknown category)."""
        own = self.categories.get(category) if category is not None else None
        values = own.over(self.values) if own is not None else self.values
        pixel = values.pixel_threshold if values.pixel_threshold is not None \
            else values.map_ceiling
        mask = (self.mask_rule or "normal_max", self.mask_peak_fraction)
        if values.threshold is None:
            return Thresholds(None, None, pixel, values.map_floor, values.map_ceiling, None,
                              *mask)
        if own is not None and own.threshold is not None:
            source = f"category:{category}"
        elif self.unit_category is not None:
            source = f"category:{self.unit_category}"
        else:
            source = "global"
        return Thresholds(values.threshold, source, pixel, values.map_floor,
                          values.map_ceiling, self.images_source, *mask)
