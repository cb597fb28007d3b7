"""Ground-truth regions for AU-PRO: 8-connected components, labelled per image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _in_plane_8_connectivity() -> np.ndarray:
    """3-D structure that joins the 8 neighbours inside one image and never across images."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    return structure


def region_sizes(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Size of the region of every anomalous pixel, in the order of ``masks[masks]``.

    ``masks`` is a (B, H, W) bool array. Returns (int32 sizes, number of regions). Labelling the
    whole batch in one call with an in-plane structure keeps regions per image while avoiding a
    Python loop over images.
    """
    if masks.ndim != 3:
        raise ValueError(f"region_sizes expects (B, H, W) masks, got shape {masks.shape}")
    anomalous = masks.reshape(masks.shape[0], -1).any(axis=1)
    if not anomalous.any():
        return np.zeros(0, dtype=np.int32), 0
    sub = masks if anomalous.all() else masks[anomalous]  # label only images with defects
    labels, n_regions = ndimage.label(sub, structure=_in_plane_8_connectivity())
    region_of_pixel = labels[sub]  # same row-major order as masks[masks]
    sizes = np.bincount(region_of_pixel, minlength=n_regions + 1)
    return sizes[region_of_pixel].astype(np.int32), int(n_regions)
