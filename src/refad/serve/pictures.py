"""Result pictures as base64 PNG strings for the JSON answer."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from refad.pipeline.postprocess import Prediction

OUTPUTS = ("heatmap", "overlay", "mask")


def png_base64(array: np.ndarray) -> str:
    """uint8 (H, W) or (H, W, 3), or bool (H, W) -> base64 PNG (bool becomes 0/255 grey)."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_outputs(result: Prediction, wanted: tuple[str, ...]) -> dict:
    """The requested pictures of one result (``wanted`` is a subset of OUTPUTS), drawn on the
    image it scored."""
    out: dict[str, str | None] = {}
    if "heatmap" in wanted:
        out["heatmap"] = png_base64(result.heatmap)
    if "overlay" in wanted:
        out["overlay"] = png_base64(result.overlay)
    if "mask" in wanted:
        out["mask"] = None if result.mask is None else png_base64(result.mask)
    return out
