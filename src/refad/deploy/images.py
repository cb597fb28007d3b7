"""Torch-free image input for deployed models: decoding and refad's exact preprocessing.

Decoding follows `refad.data.images.read_image_rgb` rule for rule (alpha dropped, not
composited; 16-bit grey scaled with rounding; float images refused; EXIF orientation ignored),
because a deployed model must see the pixels the checkpoint was calibrated on. That module
cannot be imported here without torch (its package imports the torch dataset), so the rules are
restated and `tests/test_export.py` checks both readers agree on every mode.

`preprocess` is `refad.data.dataset.image_tensor` in numpy, operation for operation and dtype for
dtype (PIL bilinear resize of the uint8 RGB picture, /255 in float32, then (x - mean) / std), so
the graph input is bit-identical to what the PyTorch model receives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from refad.errors import DataError

ImageInput = Union[str, Path, Image.Image, np.ndarray]  # noqa: UP007 (runtime alias on 3.10)

RESIZE_RULE = (
    "PIL Image.fromarray(rgb_uint8).resize((size, size), Image.Resampling.BILINEAR); "
    "float32 / 255.0; (x - mean) / std per RGB channel; HWC -> CHW; batch first (NCHW)"
)
"""The exact input rule, written into every export's metadata."""

_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def pil_to_rgb(img: Image.Image, where: str) -> np.ndarray:
    """A decoded PIL image -> (H, W, 3) uint8 RGB by refad's mode rules; `where` names it."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode == "P" and "transparency" in img.info:
        mode = "PA"
    if mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise DataError(f"{where}: unsupported image mode F (32-bit float has no defined range)")
    try:
        if mode in _ALPHA:
            return np.asarray(img.convert("RGBA"), dtype=np.uint8)[:, :, :3].copy()
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as exc:
        raise DataError(f"{where}: unsupported image mode {mode} ({_one_line(exc)})") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file by content to (H, W, 3) uint8 RGB; failures are one-line DataErrors."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (format not recognised)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open image ({_one_line(exc)})") from None
    with img:
        try:
            img.load()
        except Exception as exc:  # PIL plugins raise many types
            raise DataError(f"{path}: corrupt or truncated image ({_one_line(exc)})") from None
        return pil_to_rgb(img, str(path))


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
            raise DataError(f"{where}: cannot decode PIL image ({_one_line(exc)})") from None
        return check_rgb_array(pil_to_rgb(image, where), where)
    if isinstance(image, np.ndarray):
        return check_rgb_array(image, where)
    raise DataError(
        f"{where}: expected a file path, a PIL image or an (H, W, 3) uint8 array, "
        f"got {type(image).__name__}"
    )


def preprocess(
    rgb: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size) float32, exactly as refad's `image_tensor`."""
    resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess_batch(
    images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Stack `preprocess` of several RGB arrays into one (B, 3, size, size) float32 batch."""
    return np.stack([preprocess(im, size, mean, std) for im in images])
