"""The one preprocessing of every image refad scores: training, evaluation, `predict --run`, the
PyTorch server, exported models and `refad.deploy.Inferencer` all call `preprocess`, so the model
sees the same input array on every path (numpy and PIL only: it runs without torch).

The input size is `(height, width)`; an integer means a square. The resize rule says how a
picture of another aspect ratio reaches that size:
- "stretch" (the default, refad's rule since the start): PIL bilinear resize of the uint8 RGB
  picture straight to (height, width), the aspect ratio is not kept;
- "pad": bilinear resize by one scale factor, the largest at which the whole picture fits, then
  the rest of the input (right and bottom) is filled with the mean colour (0 after
  normalisation). The picture sits in the top-left corner: its anomaly map is the top-left
  `content_size` of the model's map, which `content_size` tells every consumer.
Then /255 in float32, (x - mean) / std per channel, HWC -> CHW. Masks follow the same geometry
with nearest-neighbour resizing (`resize_mask`), so labels line up with the input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image

from refad.errors import ConfigError

ImageSize = tuple[int, int]  # (height, width) in pixels
ResizeRule = Literal["stretch", "pad"]
RESIZE_RULES: tuple[str, ...] = ("stretch", "pad")

STRETCH_TEXT = (
    "PIL Image.fromarray(rgb_uint8).resize((size, size), Image.Resampling.BILINEAR); "
    "float32 / 255.0; (x - mean) / std per RGB channel; HWC -> CHW; batch first (NCHW)"
)
PAD_TEXT = (
    "PIL bilinear resize by one factor so the picture fits (height, width), placed top-left; "
    "float32 / 255.0; (x - mean) / std per RGB channel; the rest filled with 0; HWC -> CHW; "
    "batch first (NCHW)"
)


def as_hw(size: int | Sequence[int], where: str = "image_size") -> ImageSize:
    """An input size as (height, width): an integer is a square, a pair is (height, width)."""
    if isinstance(size, bool):
        raise ConfigError(f"{where}: expected a positive integer or [height, width], got {size!r}")
    if isinstance(size, int | np.integer):
        pair: tuple[object, ...] = (int(size), int(size))
    elif isinstance(size, Sequence) and not isinstance(size, str):
        pair = tuple(size)
    else:
        raise ConfigError(f"{where}: expected a positive integer or [height, width], got {size!r}")
    if len(pair) != 2 or any(
        isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in pair
    ):
        raise ConfigError(f"{where}: expected a positive integer or [height, width], got {size!r}")
    return int(pair[0]), int(pair[1])  # type: ignore[call-overload]


def size_value(hw: ImageSize) -> int | list[int]:
    """The stored form of a size: an integer for a square (as every file before (H, W) holds
    it, so those files stay byte for byte the same), else [height, width]."""
    return hw[0] if hw[0] == hw[1] else [hw[0], hw[1]]


def check_rule(resize: str, where: str = "resize") -> ResizeRule:
    """A known resize rule, else a one-line ConfigError naming `where`."""
    if resize not in RESIZE_RULES:
        raise ConfigError(f"{where}: {resize!r} is not a resize rule; use one of "
                          f"{', '.join(RESIZE_RULES)}")
    return resize  # type: ignore[return-value]


def rule_text(resize: str, size: int | Sequence[int] | None = None) -> str:
    """The exact input rule in words, written into every export's metadata (a square stretch
    in the words every export before (height, width) holds)."""
    if check_rule(resize) == "pad":
        return PAD_TEXT
    if size is None or as_hw(size)[0] == as_hw(size)[1]:
        return STRETCH_TEXT
    return STRETCH_TEXT.replace("(size, size)", "(width, height)")


def content_size(image_hw: ImageSize, size: ImageSize, resize: str = "stretch") -> ImageSize:
    """(height, width) of the part of the model input that holds a picture of `image_hw`
    (its top-left corner): all of it when stretching."""
    if check_rule(resize) == "stretch":
        return size
    scale = min(size[0] / image_hw[0], size[1] / image_hw[1])
    return (min(size[0], max(1, round(image_hw[0] * scale))),
            min(size[1], max(1, round(image_hw[1] * scale))))


def _fit(picture: Image.Image, size: ImageSize, resize: str, method: Image.Resampling
         ) -> tuple[np.ndarray, ImageSize]:
    """The picture resized to its content size, as an array, and that size."""
    inner = content_size((picture.height, picture.width), size, resize)
    return np.asarray(picture.resize((inner[1], inner[0]), method)), inner


def preprocess(
    rgb: np.ndarray,
    size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    resize: str = "stretch",
) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> (3, H, W) float32 model input by the rule of this module."""
    hw = as_hw(size, "size")
    resized, inner = _fit(Image.fromarray(rgb), hw, resize, Image.Resampling.BILINEAR)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    if inner != hw:
        full = np.zeros((*hw, 3), dtype=np.float32)
        full[: inner[0], : inner[1]] = arr
        arr = full
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess_batch(
    images: Sequence[np.ndarray],
    size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    resize: str = "stretch",
) -> np.ndarray:
    """Stack `preprocess` of several RGB arrays into one (B, 3, H, W) float32 batch."""
    return np.stack([preprocess(im, size, mean, std, resize) for im in images])


def resize_mask(mask: np.ndarray, size: int | Sequence[int], resize: str = "stretch"
                ) -> np.ndarray:
    """A boolean (h, w) defect mask -> (H, W) float32 in {0, 1} on the model input's pixels
    (nearest neighbour, so it stays binary; padding is defect-free)."""
    hw = as_hw(size, "size")
    picture = Image.fromarray(mask.astype(np.uint8) * 255)
    small, inner = _fit(picture, hw, resize, Image.Resampling.NEAREST)
    out = np.zeros(hw, dtype=np.float32)
    out[: inner[0], : inner[1]] = small > 127
    return out


def content_maps(
    maps: Sequence[np.ndarray], images: Sequence[np.ndarray], size: int | Sequence[int],
    resize: str = "stretch",
) -> Sequence[np.ndarray]:
    """Each model-size map cut to the part that shows its picture (`content_size`), so that
    resizing it to the picture's size maps pixel to pixel; stretched maps are returned as
    they are."""
    if check_rule(resize) == "stretch":
        return maps
    hw = as_hw(size, "size")
    cuts = [content_size(im.shape[:2], hw, resize) for im in images]
    return [m[:h, :w] for m, (h, w) in zip(maps, cuts, strict=True)]


def size_label(size: int | Sequence[int] | None) -> str:
    """An input size as reports print it: "256" for a square, "128 x 320" (height x width)."""
    if size is None or isinstance(size, int | str):
        return str(size)
    return " x ".join(str(v) for v in size)
