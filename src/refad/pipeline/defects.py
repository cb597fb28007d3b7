"""Where the defect is: the binary defect mask of an anomaly map and its regions (boxes).

A defect pixel is a pixel of the full-size map above the pixel threshold
(`refad.pipeline.calibration.Thresholds.pixel_threshold`: the calibrated one, else
`map_ceiling`, worse than any normal pixel seen). Regions are the 8-connected components of the
mask, largest first.
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


def defect_mask(full_map: np.ndarray, threshold: float | None) -> np.ndarray | None:
    """(H, W) bool: pixels of the map (at image size) above `threshold`; None without one.
    NaN pixels are never defect pixels (a non-finite map gets no decision anyway)."""
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
