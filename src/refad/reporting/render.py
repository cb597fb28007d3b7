"""Turning anomaly maps into pictures: a colour heatmap and an overlay on the image."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image


def normalise_map(amap: np.ndarray, floor: float, ceiling: float) -> np.ndarray:
    """Map values to [0, 1]: `floor` (typical normal pixel) -> 0, `ceiling` (worst normal) -> 1.

    Using the run's calibration instead of each map's own min/max keeps colours comparable
    across images: a normal image stays cool instead of being stretched to full red.
    """
    span = max(ceiling - floor, 1e-12)
    return np.clip((amap - floor) / span, 0.0, 1.0)


def heatmap_rgb(unit_map: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 colour image."""
    rgba = colormaps[cmap](unit_map)
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def resize_map(amap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float map to the original image size."""
    img = Image.fromarray(amap.astype(np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.BILINEAR))


def overlay(image: np.ndarray, heat: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Blend an RGB image and a heatmap of the same size."""
    mixed = (1 - weight) * image.astype(np.float32) + weight * heat.astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)
