"""SegF1 and the predicted-to-true defect area ratio at the defect masks' level, streamed.

Why: a line that outlines defects needs to know how good the outline is at the threshold it
will use, not over all thresholds (P-F1max picks the best threshold after seeing the test
masks). MVTec AD 2 ranks methods this way (SegF1). Counting true / false positive and false
negative pixels batch by batch keeps the state at a few integers per category, exactly.

Definitions (a pixel is predicted defective when its map value > its map's defect level, the
level `refad predict` draws masks at: `refad.pipeline.defects.defect_level`, from the pixel
threshold and, under the "peak" rule, the map's own peak; masks are binarised at > 0.5):

* `seg_f1` = 2 TP / (2 TP + FP + FN) over every pixel of the category's test images, with
  `seg_precision` and `seg_recall` beside it; NaN when the category has no defect pixel;
* `area_ratio`: the mean, over defective images, of predicted defect pixels / true defect
  pixels (1 is the right size, 5 a blob five times the defect, 0 nothing found); NaN without
  a defective image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from refad.errors import DataError
from refad.pipeline.defects import defect_level

from .accumulator import binary_labels
from .backend import to_host

SEGMENTATION_NAMES: tuple[str, ...] = ("seg_f1", "seg_precision", "seg_recall", "area_ratio")


def _squeeze(x: Any) -> Any:
    return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x


def _per_image_sum(x: Any) -> np.ndarray:
    """Set pixels of each (H, W) plane of a (B, H, W) bool array or tensor, on the host."""
    return np.asarray(to_host(x.reshape(x.shape[0], -1).sum(1)), dtype=np.int64)


def _per_image_max(x: Any) -> np.ndarray:
    return np.asarray(to_host(x.reshape(x.shape[0], -1).amax(1) if hasattr(x, "amax")
                              else x.reshape(x.shape[0], -1).max(1)), dtype=np.float64)


class SegmentationCounter:
    """Exact pixel counts of one category at its defect level (module doc): `threshold` the
    pixel threshold, `rule`, `map_floor` and `fraction` the mask rule's. Maps and masks may be
    NumPy arrays or torch tensors on any device (counted there, only sums come back)."""

    def __init__(self, threshold: float, rule: str = "normal_max",
                 map_floor: float | None = None, fraction: float | None = None) -> None:
        if not math.isfinite(threshold):
            raise DataError(f"pixel threshold: must be a finite number, got {threshold!r}")
        self.threshold = float(threshold)
        self.rule, self.map_floor, self.fraction = rule, map_floor, fraction
        self.tp = self.fp = self.fn = 0
        self._ratios: list[np.ndarray] = []

    def update(self, maps: Any, masks: Any, labels: Any) -> None:
        """Add a batch: (B, H, W) maps, (B, H, W) masks (bool or numbers), (B,) 0/1 labels."""
        maps, masks = _squeeze(maps), _squeeze(masks)
        if tuple(maps.shape) != tuple(masks.shape) or maps.ndim != 3:
            raise DataError(f"SegmentationCounter.update: maps {tuple(maps.shape)} and masks "
                            f"{tuple(masks.shape)} must both be (B, H, W)")
        truth = masks if masks.dtype in (bool, np.bool_) or str(masks.dtype) == "torch.bool" \
            else masks > 0.5
        levels = defect_level(_per_image_max(maps), self.threshold, self.map_floor, self.rule,
                              self.fraction)
        shaped = levels.reshape(-1, 1, 1)  # compared in the maps' own dtype, as a scalar was
        predicted = maps > (maps.new_tensor(shaped) if hasattr(maps, "new_tensor")
                            else shaped.astype(maps.dtype))
        hit = _per_image_sum(predicted & truth)
        flagged = _per_image_sum(predicted)
        true_area = _per_image_sum(truth)
        self.tp += int(hit.sum())
        self.fp += int((flagged - hit).sum())
        self.fn += int((true_area - hit).sum())
        defective = binary_labels(labels, "SegmentationCounter.update labels")
        if defective.size != flagged.size:
            raise DataError(f"SegmentationCounter.update: {defective.size} labels for "
                            f"{flagged.size} maps")
        keep = defective & (true_area > 0)
        if keep.any():
            self._ratios.append(flagged[keep] / true_area[keep])

    def compute(self) -> dict[str, Any]:
        """SEGMENTATION_NAMES as fractions (area_ratio as a plain ratio), the pixel counts and
        the threshold they were taken at."""
        tp, fp, fn = self.tp, self.fp, self.fn
        defined = tp + fn > 0
        ratios = np.concatenate(self._ratios) if self._ratios else np.zeros(0)
        return {
            "pixel_threshold": self.threshold,
            "mask_rule": self.rule,
            "seg_f1": 2 * tp / (2 * tp + fp + fn) if defined else math.nan,
            "seg_precision": tp / (tp + fp) if tp + fp else math.nan,
            "seg_recall": tp / (tp + fn) if defined else math.nan,
            "area_ratio": float(ratios.mean()) if ratios.size else math.nan,
            "pixel_tp": tp, "pixel_fp": fp, "pixel_fn": fn,
        }
