"""Where the defect is: the binary defect mask of an anomaly map and its regions (boxes).

A defect pixel is a pixel of the full-size map above the map's defect level, which the mask
rule sets from calibrated values (normal images only) and the map's own peak:

* "normal_max" (runs calibrated before the rule existed): the pixel threshold
  (`Thresholds.pixel_threshold`: the calibrated quantile of normal maps' maxima, else
  `map_ceiling`, worse than any normal pixel seen);
* "peak" (the default since): no defect pixel unless the peak is above the pixel threshold;
  then the pixels above max(pixel threshold, floor + fraction * (peak - floor)), `floor` the
  normal maps' typical level (`map_floor`, at most the pixel threshold), so the peak itself is
  always a defect pixel. A smoothed map rises far above the normal level
  over a defect, so the first rule drew blobs several times the defect
  (benchmarks/mask_rules.md: every rule tried, and the fraction 0.85 chosen there).

Regions are the 8-connected components of the mask, largest first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DefectRegion:
    """One connected region of defect pixels: its bounding box (pixels, x to the right,
    y down, exclusive width/height), its pixel count and its largest map value."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


MASK_RULES = ("peak", "normal_max")


def defect_level(
    peak: float | np.ndarray,
    pixel_threshold: float | None,
    map_floor: float | None = None,
    rule: str = "normal_max",
    fraction: float | None = None,
) -> float | np.ndarray | None:
    """The level above which a map with this `peak` (a number, or an array of peaks) has its
    defect pixels (module doc); None without a pixel threshold."""
    if pixel_threshold is None:
        return None
    if rule == "normal_max" or map_floor is None or fraction is None:
        return pixel_threshold if np.ndim(peak) == 0 else np.full(np.shape(peak), pixel_threshold)
    if rule != "peak":
        raise ValueError(f"unknown mask rule {rule!r}")
    floor = min(map_floor, pixel_threshold)  # a floor above it (an edited record) would
    # put the level above the peak: no mask for a map that passed the pixel threshold
    level = np.maximum(pixel_threshold, floor + fraction * (np.asarray(peak) - floor))
    return float(level) if np.ndim(peak) == 0 else level


def defect_mask(full_map: np.ndarray, threshold: float | None) -> np.ndarray | None:
    """(H, W) bool: pixels of the map (at image size) above `threshold` (its defect level);
    None without one. NaN pixels are never defect pixels (a non-finite map gets no decision
    anyway)."""
    if threshold is None:
        return None
    return np.asarray(full_map) > threshold


def defect_regions(mask: np.ndarray | None, full_map: np.ndarray) -> list[DefectRegion]:
    """The 8-connected regions of `mask`, largest area first (ties: top-left first)."""
    if mask is None or not mask.any():
        return []
    from scipy import ndimage  # only when there is a defect to describe

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(mask, labels, index)
    peaks = ndimage.maximum(full_map, labels, index)
    regions = [
        DefectRegion(x=s[1].start, y=s[0].start, width=s[1].stop - s[1].start,
                     height=s[0].stop - s[0].start, area=int(a), peak=float(p))
        for s, a, p in zip(ndimage.find_objects(labels), areas, peaks, strict=True)
    ]
    return sorted(regions, key=lambda r: (-r.area, r.y, r.x))
