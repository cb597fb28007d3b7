"""Calibration from NORMAL images only: score normalisation, heatmap range and a threshold.

Never uses test images. With `train.val_fraction > 0` it uses held-out normal training images;
otherwise the training images themselves (whose scores are optimistic, so the threshold is
conservative towards false alarms); `source` records which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from refad.inference.scorer import Scorer


def calibrate(
    scorer: Scorer,
    levels: Sequence[torch.Tensor],
    batch_size: int,
    quantile: float,
    source: str,
) -> dict[str, Any]:
    """Statistics of normal image scores and pixel maps used by `predict`."""
    image_scores: list[np.ndarray] = []
    map_medians: list[np.ndarray] = []
    map_maxima: list[np.ndarray] = []
    for scores in scorer.score_cached(levels, batch_size):
        image_scores.append(scores.image.float().cpu().numpy())
        flat = scores.maps.flatten(1).float()
        map_medians.append(flat.median(dim=1).values.cpu().numpy())
        map_maxima.append(flat.amax(dim=1).cpu().numpy())
    img = np.concatenate(image_scores)
    return {
        "source": source,
        "images": int(img.size),
        "image_score_median": float(np.median(img)),
        "image_score_max": float(img.max()),
        "threshold_quantile": quantile,
        "threshold": float(np.quantile(img, quantile)),
        "map_floor": float(np.median(np.concatenate(map_medians))),
        "map_ceiling": float(np.concatenate(map_maxima).max()),
    }
