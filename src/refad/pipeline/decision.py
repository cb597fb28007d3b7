"""The one decision rule: an image is anomalous when its score is strictly above the threshold
that applies to it. `refad test` (its decision metrics), `refad predict`, both server backends
and `refad.deploy.Inferencer` all decide here, as do the report's galleries, the curves'
operating point and the export's parity check, so no path can drift from the others.
"""

from __future__ import annotations

import math

import numpy as np


def exceeds(scores: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) bool: which `scores` are strictly above `threshold` (a score equal to it is normal)."""
    return np.asarray(scores, dtype=np.float64) > threshold


def is_anomalous(score: float, threshold: float) -> bool:
    """One score against one threshold, by the same rule as `exceeds`."""
    return bool(exceeds(np.float64(score), threshold))


def decide(
    score: float, threshold: float | None, map_finite: bool = True
) -> tuple[bool | None, float | None]:
    """(anomalous, normalised score) of one image.

    No threshold, a non-finite score or a non-finite map (a diverged model) gives no decision:
    (None, None). Scores are errors (>= 0), so only a threshold above 0 gives a normalised
    score (`score / threshold`); a threshold at or below 0 would give one of the wrong sign."""
    if threshold is None or not (map_finite and math.isfinite(score)):
        return None, None
    normalised = score / threshold if threshold > 0 else None
    return is_anomalous(score, threshold), normalised
