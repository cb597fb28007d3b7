"""Torch-free image input for deployed models: decoding and refad's exact preprocessing.

Decoding IS `refad.data.images` (numpy and PIL only; the same limits and mode rules: alpha
dropped, not composited; 16-bit grey scaled with rounding; float images refused; EXIF
orientation ignored), because a deployed model must see the pixels the checkpoint was
calibrated on.

`preprocess` IS `refad.pipeline.preprocess.preprocess`, the function the torch Dataset calls too
(PIL bilinear resize of the uint8 RGB picture by the run's resize rule, /255 in float32, then
(x - mean) / std), so the graph input is bit-identical to what the PyTorch model receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from refad.data.images import one_line, read_image_rgb, rgb_array
from refad.errors import DataError
from refad.pipeline.preprocess import STRETCH_TEXT, preprocess, preprocess_batch

__all__ = ["RESIZE_RULE", "ImageInput", "check_rgb_array", "load_rgb", "pil_to_rgb",
           "preprocess", "preprocess_batch", "read_rgb"]

ImageInput = Union[str, Path, Image.Image, np.ndarray]  # noqa: UP007 (runtime alias on 3.10)

RESIZE_RULE = STRETCH_TEXT
"""The exact input rule of the default "stretch" resize, written into export metadata."""

pil_to_rgb = rgb_array
read_rgb = read_image_rgb


def check_rgb_array(arr: np.ndarray, where: str) -> np.ndarray:
    """Accept only (H, W, 3) uint8 arrays: any other dtype or layout has no agreed meaning."""
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{where}: expected an (H, W, 3) uint8 array, got {type(arr).__name__}")
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(
            f"{where}: expected an (H, W, 3) uint8 RGB array, got shape {tuple(arr.shape)} "
            f"dtype {arr.dtype}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"{where}: empty image (shape {tuple(arr.shape)})")
    return np.ascontiguousarray(arr)


def load_rgb(image: ImageInput, where: str = "image") -> np.ndarray:
    """A path, a PIL image or an (H, W, 3) uint8 array -> (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, Path)):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        try:
            image.load()
        except Exception as exc:
            raise DataError(f"{where}: cannot decode PIL image ({one_line(exc)})") from None
        return check_rgb_array(pil_to_rgb(image, where), where)
    if isinstance(image, np.ndarray):
        return check_rgb_array(image, where)
    raise DataError(
        f"{where}: expected a file path, a PIL image or an (H, W, 3) uint8 array, "
        f"got {type(image).__name__}"
    )
