"""Post-processing pictures without torch: map resize, calibrated normalisation, jet heatmap.

The same rules as refad's own predict (the run's `map_floor` -> 0 and `map_ceiling` -> 1, so
colours stay comparable across images; PIL float bilinear resize to the original size; the
matplotlib "jet" colormap rounded to uint8), so a deployed heatmap is the checkpoint's heatmap.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_map(amap: np.ndarray, width: int, height: int) -> np.ndarray:
    """(S, S) float map -> (height, width) float32, PIL bilinear (mode F)."""
    img = Image.fromarray(np.asarray(amap, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def normalise_map(amap: np.ndarray, floor: float, ceiling: float) -> np.ndarray:
    """Values to [0, 1]: `floor` (typical normal pixel) -> 0, `ceiling` (worst normal) -> 1."""
    span = max(ceiling - floor, 1e-12)
    return np.clip((amap - floor) / span, 0.0, 1.0)


def heatmap_rgb(unit_map: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8; matplotlib is imported only when a heatmap is made."""
    from matplotlib import colormaps

    rgba = colormaps[cmap](unit_map)
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def blend(image: np.ndarray, heat: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Blend an RGB image and a heatmap of the same size."""
    mixed = (1 - weight) * image.astype(np.float32) + weight * heat.astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)
