"""Uploaded bytes -> RGB array, in memory, by content, refusing bombs before the pixel decode.

The conversions are refad's own (``refad.data.images``), so an image scores the same whether it
is read from disk by ``refad predict`` or uploaded here.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import PurePath

import numpy as np
from PIL import Image, UnidentifiedImageError

from refad.data.images import one_line, rgb_array
from refad.errors import DataError


class ImageRejected(ValueError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def _opened(data: bytes, name: str, max_pixels: int) -> Iterator[Image.Image]:
    """The upload opened with its header checked: recognised, with 1 to ``max_pixels`` pixels.

    The size comes from the header, before any pixel is decoded (a few-kB PNG can declare
    gigapixels). PIL's own bomb guard stays on as a second line, for the decode too.
    """
    if not data:
        raise ImageRejected(f"{name}: empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns on odd files; the errors below are what count
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageRejected(f"{name}: not an image (format not recognised)", 415) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(f"{name}: image too large ({one_line(exc)})", 413) from None
        except Exception as exc:  # noqa: BLE001 - PIL plugins raise many types on bad headers
            raise ImageRejected(f"{name}: cannot read image header ({one_line(exc)})") from None
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageRejected(f"{name}: image has no pixels")
            if width * height > max_pixels:
                raise ImageRejected(
                    f"{name}: {width}x{height} pixels is over the limit of {max_pixels}", 413
                )
            yield img


def image_pixels(data: bytes, name: str, max_pixels: int) -> int:
    """Width x height from the header alone, with the same refusals as :func:`decode_image`."""
    with _opened(data, name, max_pixels) as img:
        return img.size[0] * img.size[1]


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decode one upload to (H, W, 3) uint8. ``name`` only labels error messages."""
    label = PurePath(name)  # rgb_array names the file in its messages; nothing is opened
    with _opened(data, name, max_pixels) as img:
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(f"{name}: image too large ({one_line(exc)})", 413) from None
        except Exception as exc:  # noqa: BLE001
            raise ImageRejected(f"{name}: corrupt or truncated image ({one_line(exc)})") \
                from None
        try:
            rgb = rgb_array(img, label)
        except DataError as exc:
            raise ImageRejected(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - exotic modes PIL cannot convert
            raise ImageRejected(f"{name}: unsupported image ({one_line(exc)})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageRejected(f"{name}: could not convert to RGB")
    return rgb
