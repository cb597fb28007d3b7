"""The pictures of one gallery entry (image, heatmap overlay, ground truth, predicted mask) at
display size, each as a PNG data URI: the page stays small and opens offline."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from refad.data.images import read_mask
from refad.errors import DataError
from refad.inference.batches import ImageResult
from refad.pipeline.calibration import Thresholds
from refad.pipeline.defects import defect_mask
from refad.pipeline.render import heatmap_rgb, normalise_map, outline, overlay, resize_map

PICTURE_MAX = 256
"""Longest side (pixels) of an embedded gallery picture: keeps the page small."""

TRUTH_RGB = (40, 220, 70)  # ground-truth outline: distinct from the overlay's white outline


def png_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) or (H, W) uint8 array as a PNG data URI."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def display_size(width: int, height: int, limit: int = PICTURE_MAX) -> tuple[int, int]:
    """(width, height) scaled down so that the longer side is at most `limit`."""
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask at display size; a pixel stays set when a quarter of its area is set, so
    thin defects do not vanish when the picture is made smaller."""
    if mask.shape[::-1] == size:
        return mask
    grey = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
    return np.asarray(grey) > 63


@dataclass(frozen=True)
class Tile:
    """One labelled picture of a gallery entry; `uri` None shows `text` instead."""

    label: str
    uri: str | None
    text: str = ""


def has_colour_range(thresholds: Thresholds) -> bool:
    """Whether heatmaps can be coloured on the calibrated floor/ceiling of normal maps."""
    return thresholds.map_floor is not None and thresholds.map_ceiling is not None


def entry_tiles(row: dict[str, Any], result: ImageResult, thresholds: Thresholds,
                ) -> list[Tile]:
    """Image, heatmap overlay (predicted defect outlined), ground truth outlined, predicted
    mask; all at display size, the map resized straight to it (never to full size first)."""
    height, width = result.image.shape[:2]
    size = display_size(width, height)
    image = result.image
    if size != (width, height):
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    amap = resize_map(result.amap, *size)
    if has_colour_range(thresholds):
        floor, ceiling = thresholds.map_floor, thresholds.map_ceiling
    else:  # said beside the gallery: each map on its own range
        floor, ceiling = float(np.nanmin(amap)), float(np.nanmax(amap))
    heat = heatmap_rgb(normalise_map(amap, floor, ceiling))
    predicted = defect_mask(amap, thresholds.defect_level(float(np.nanmax(amap))))
    tiles = [
        Tile("image", png_uri(image)),
        Tile("overlay", png_uri(overlay(image, heat, mask=predicted))),
        _truth_tile(row, image, (height, width), size),
    ]
    if predicted is None:
        tiles.append(Tile("predicted mask", None, "no pixel threshold (run not calibrated)"))
    else:
        label = "predicted mask" if predicted.any() else "predicted mask (empty)"
        tiles.append(Tile(label, png_uri(predicted.astype(np.uint8) * 255)))
    return tiles


def _truth_tile(row: dict[str, Any], image: np.ndarray, full_hw: tuple[int, int],
                size: tuple[int, int]) -> Tile:
    if not row.get("mask"):
        text = "good image: no defect" if row["label"] == 0 else "no mask for this image"
        return Tile("ground truth", None, text)
    try:
        truth = read_mask(Path(row["mask"]), full_hw, image=Path(row["image"]))
    except DataError as exc:
        return Tile("ground truth", None, str(exc))
    return Tile("ground truth", png_uri(outline(image, _shrink_mask(truth, size), TRUTH_RGB)))
