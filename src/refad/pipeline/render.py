"""Turning anomaly maps into pictures, without torch: calibrated normalisation, a colour
heatmap, an overlay on the image and a defect outline. Used by every scoring path (refad's
predict, the server, the exported models' `Inferencer`), so a deployed heatmap is the
checkpoint's heatmap.

Pictures are made at the image's full size, so nothing here holds a full-size float64 array:
maps stay float32, colours come from a uint8 lookup table, and the blend runs a block of rows
at a time (an 8000x8000 image made matplotlib's colormap allocate several GB of float64).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

_ROWS = 256
"""Rows per step of the blocked loops: their temporaries stay a few MB at any width."""


def normalise_map(amap: np.ndarray, floor: float, ceiling: float) -> np.ndarray:
    """Map values to [0, 1] as float32: `floor` (typical normal pixel) -> 0, `ceiling` (worst
    normal) -> 1.

    Using the run's calibration instead of each map's own min/max keeps colours comparable
    across images: a normal image stays cool instead of being stretched to full red.
    """
    span = np.float32(max(ceiling - floor, 1e-12))
    out = np.asarray(amap, dtype=np.float32) - np.float32(floor)
    out /= span
    return np.clip(out, 0.0, 1.0, out=out)


@cache
def _lookup_table(cmap: str) -> np.ndarray:
    """(N + 1, 3) uint8: the N colours of `cmap` rounded as before, then its colour for NaN."""
    from matplotlib import colormaps  # only when a heatmap is made

    colours = colormaps[cmap]
    table = colours(np.arange(colours.N))[:, :3]
    bad = np.asarray(colours.get_bad(), dtype=np.float64)[None, :3]
    table = (np.concatenate([table, bad]) * 255).round().astype(np.uint8)
    table.flags.writeable = False
    return table


def _colour_indices(block: np.ndarray, n: int) -> np.ndarray:
    """matplotlib's own binning of floats: floor(x * N), 1.0 in the last bin, outside values to
    the end colours, NaN to index N (the 'bad' colour). Same bins, so the same colours."""
    scaled = np.multiply(block, n, dtype=np.result_type(block.dtype, np.float32))
    np.clip(scaled, 0, n - 1, out=scaled)
    scaled[np.isnan(scaled)] = n
    return scaled.astype(np.intp)


def heatmap_rgb(unit_map: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 colour image, through a lookup table built once.

    Identical to applying matplotlib's colormap and rounding to uint8, without its float64
    RGBA copy of the whole map.
    """
    table = _lookup_table(cmap)
    values = np.asarray(unit_map)
    out = np.empty((*values.shape, 3), np.uint8)
    for top in range(0, values.shape[0], _ROWS):
        out[top : top + _ROWS] = table[_colour_indices(values[top : top + _ROWS], len(table) - 1)]
    return out


def resize_map(amap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float map to the original image size (float32)."""
    img = Image.fromarray(np.asarray(amap, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def overlay(
    image: np.ndarray, heat: np.ndarray, weight: float = 0.5, mask: np.ndarray | None = None
) -> np.ndarray:
    """Blend an RGB image and a heatmap of the same size (float32 per block of rows); with a
    defect `mask`, its regions are outlined on top."""
    out = np.empty(np.broadcast_shapes(image.shape, heat.shape), np.uint8)
    for top in range(0, out.shape[0], _ROWS):
        rows = slice(top, top + _ROWS)
        mixed = (1 - weight) * image[rows].astype(np.float32)
        mixed += weight * heat[rows].astype(np.float32)
        out[rows] = mixed.round().clip(0, 255)
    return out if mask is None else outline(out, mask)


OUTLINE_RGB = (255, 255, 255)


def outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = OUTLINE_RGB,
            ) -> np.ndarray:
    """A copy of `image` with the border pixels of `mask`'s regions painted in `colour` (a
    mask pixel with a 4-neighbour outside the mask, or on the image edge)."""
    mask = np.asarray(mask, dtype=bool)
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    out = np.array(image, dtype=np.uint8, copy=True)
    out[mask & ~inner] = colour
    return out
