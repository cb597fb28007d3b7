"""The one result step of every scoring path: a model's map and score -> one `Prediction`.

`postprocess` resizes the map to the image's own size (bilinear, float32), marks the defect
mask (pixels above the map's defect level, `refad.pipeline.defects`), decides the image
(`refad.pipeline.decision`) and keeps what the pictures need; heatmap, overlay and defect
regions are made on first access (most callers of the server ask for none). A non-finite
score or map (a diverged model) gives `finite` False, no decision and no mask. `refad predict`
(`--run` and `--model`), both server backends and `refad.deploy.Inferencer` all call it, so
an image gets the same result on each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from refad.pipeline.calibration import Thresholds
from refad.pipeline.decision import decide
from refad.pipeline.defects import DefectRegion, defect_mask, defect_regions
from refad.pipeline.render import heatmap_rgb, normalise_map, overlay, resize_map


@dataclass(frozen=True, eq=False)
class Prediction:
    """One image's result. `raw_map` is the model's map at its input size; the rest is derived
    (`anomaly_map` at the original image size)."""

    score: float
    threshold: float | None
    threshold_source: str | None  # "category:<c>", "global", an override's name, or None
    anomalous: bool | None  # None: no threshold, or not finite
    normalised_score: float | None  # score / threshold
    finite: bool
    anomaly_map: np.ndarray  # (H, W) float32 at the original image size
    mask: np.ndarray | None  # (H, W) bool, map > its defect level; None: none, or not finite
    pixel_threshold: float | None
    unit: str | None  # the model (unit) that scored it, where the caller says
    category: str | None  # the category that decided (None: unknown, the global threshold)
    map_floor: float
    map_ceiling: float
    image: np.ndarray = field(repr=False)  # the (H, W, 3) uint8 image scored
    raw_map: np.ndarray = field(repr=False)

    @cached_property
    def heatmap(self) -> np.ndarray:
        """(H, W, 3) uint8 jet heatmap, coloured by the calibrated floor/ceiling."""
        return heatmap_rgb(normalise_map(self.anomaly_map, self.map_floor, self.map_ceiling))

    @cached_property
    def overlay(self) -> np.ndarray:
        """The heatmap blended half and half over the image, defect regions outlined."""
        return overlay(self.image, self.heatmap, mask=self.mask)

    @cached_property
    def regions(self) -> list[DefectRegion]:
        """The connected regions of the defect mask (boxes, areas), largest first."""
        return defect_regions(self.mask, self.anomaly_map)

    @property
    def defect_pixels(self) -> int | None:
        """Pixels of the defect mask (None: no mask)."""
        return None if self.mask is None else int(self.mask.sum())


def is_finite(score: float, raw_map: np.ndarray) -> bool:
    """False when the score or a map value is NaN or infinite (a diverged model): such a
    result never becomes a decision."""
    return math.isfinite(score) and bool(np.isfinite(raw_map).all())


def postprocess(
    image: np.ndarray,
    raw_map: np.ndarray,
    score: float,
    thresholds: Thresholds,
    category: str | None = None,
    unit: str | None = None,
    content: tuple[int, int] | None = None,
) -> Prediction:
    """The result of one scored image. `image`: the (H, W, 3) uint8 picture that was scored;
    `raw_map`: its (h, w) map at the model's input size; `content`: the (height, width) of the
    map's top-left part that shows the picture, where the input was padded (None: all of it)."""
    if content is not None:
        raw_map = raw_map[: content[0], : content[1]]
    height, width = image.shape[:2]
    full = resize_map(raw_map, width, height)
    finite = is_finite(score, raw_map)
    anomalous, normalised = decide(score, thresholds.threshold, finite)
    floor, ceiling = thresholds.colour_range(raw_map)
    return Prediction(
        score=score,
        threshold=thresholds.threshold,
        threshold_source=thresholds.source if thresholds.threshold is not None else None,
        anomalous=anomalous,
        normalised_score=normalised,
        finite=finite,
        anomaly_map=full,
        mask=defect_mask(full, thresholds.defect_level(float(full.max()))) if finite else None,
        pixel_threshold=thresholds.pixel_threshold,
        unit=unit,
        category=category,
        map_floor=float(floor),
        map_ceiling=float(ceiling),
        image=image,
        raw_map=raw_map,
    )
