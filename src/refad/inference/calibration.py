"""Calibration from NORMAL images only: thresholds, heatmap range and the defect-mask level.

Never uses test images. Which normal images is `train.calibration_images`: "held_out" (a
part of the training images set aside by `train.val_fraction`, never trained on: honest
thresholds) or "training" (the training images themselves, whose scores are optimistic, so
false alarms come out higher); `source` records which.

Per category (and globally, for images of unknown category):

* `threshold`: an estimate of the `quantile` of normal scores; an image is anomalous when its
  score is above it. Rule `empirical`: the sample quantile. Rule `normal_tail`: the larger of
  the sample quantile and mean + z * std (z the standard normal's `quantile` point). With n
  normal images the sample 0.99 quantile is about their maximum, which a new normal image
  exceeds with probability about 1 / (n + 1) (14% for 6 images): far above the 1% asked for;
  the normal-tail estimate does not shrink with n that way;
* `pixel_threshold`: the same quantile of the normal images' map maxima; a pixel is a defect
  pixel when above it (so at most 1 - quantile of normal images show any defect pixel);
* `map_floor` / `map_ceiling`: the median over normal images of each map's median pixel, and
  the largest pixel of the normal maps: the colour range of heatmaps (comparable between
  images). For the global values of a unified run these pool every category's images.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from refad.inference.scorer import Scorer
from refad.pipeline.calibration import Calibration
from refad.pipeline.tiled import TiledImages


def calibrate(
    scorer: Scorer,
    levels: Sequence[torch.Tensor],
    categories: Sequence[str],
    batch_size: int,
    quantile: float,
    source: str,
    rule: str = "empirical",
    tiles: TiledImages | None = None,
) -> Calibration:
    """Global statistics of the normal images of `levels`, plus `categories`: the same
    statistics per category (`categories[i]` names the category of image i). Its
    `to_record()` is what a checkpoint stores. `tiles`: `levels` are the tiles of the images
    (`data.tiling`), stitched into each image's map and max tile score as every scoring path
    does, so the thresholds fit what `refad test` and `predict` see."""
    image_scores: list[np.ndarray] = []
    map_medians: list[np.ndarray] = []
    map_maxima: list[np.ndarray] = []
    for scores in scorer.score_cached(levels, batch_size):
        if tiles is not None:
            done = tiles.add(scores.maps.float().cpu().numpy(), scores.image.float().cpu())
            image_scores.append(np.array([s for _, s in done], dtype=np.float32))
            map_medians.append(np.array([np.median(m) for m, _ in done], dtype=np.float32))
            map_maxima.append(np.array([m.max() for m, _ in done], dtype=np.float32))
            continue
        image_scores.append(scores.image.float().cpu().numpy())
        flat = scores.maps.flatten(1).float()
        map_medians.append(flat.median(dim=1).values.cpu().numpy())
        map_maxima.append(flat.amax(dim=1).cpu().numpy())
    img, med, peak = (np.concatenate(a) for a in (image_scores, map_medians, map_maxima))
    names = np.asarray(categories)
    if names.shape != img.shape:
        raise ValueError(f"{len(categories)} category names for {img.size} calibration images")
    per_category = {
        str(c): normal_statistics(
            img[names == c], med[names == c], peak[names == c], quantile, rule
        )
        for c in sorted(set(categories))
    }
    return Calibration.from_record({
        "source": source,
        "threshold_quantile": quantile,
        "threshold_rule": rule,
        **normal_statistics(img, med, peak, quantile, rule),
        "categories": per_category,
    })


def upper_quantile(values: np.ndarray, quantile: float, rule: str) -> float:
    """The `quantile` of the distribution `values` come from, by `rule` (module doc)."""
    sample = float(np.quantile(values, quantile))
    if rule == "empirical" or values.size < 2:
        return sample
    if rule != "normal_tail":
        raise ValueError(f"unknown threshold rule {rule!r}")
    tail = float(values.mean() + NormalDist().inv_cdf(quantile) * values.std(ddof=1))
    return max(sample, tail)


def normal_statistics(
    image_scores: np.ndarray,
    map_medians: np.ndarray,
    map_maxima: np.ndarray,
    quantile: float,
    rule: str = "empirical",
) -> dict[str, Any]:
    """Thresholds and colour range from one set of normal images (module doc)."""
    return {
        "images": int(image_scores.size),
        "image_score_median": float(np.median(image_scores)),
        "image_score_max": float(image_scores.max()),
        "threshold": upper_quantile(image_scores, quantile, rule),
        "pixel_threshold": upper_quantile(map_maxima, quantile, rule),
        "map_floor": float(np.median(map_medians)),
        "map_ceiling": float(map_maxima.max()),
    }
