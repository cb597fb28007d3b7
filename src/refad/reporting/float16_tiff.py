"""A one-channel float16 TIFF writer (baseline TIFF, uncompressed, one strip).

Why our own: the MVTec AD 2 evaluation server takes anomaly maps as float16 TIFF files, which
PIL cannot write, and a dependency for eleven header fields is not worth it. The file is
little-endian with SampleFormat 3 (IEEE float) and BitsPerSample 16, which tifffile and
OpenCV read as float16.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from refad.atomic import write_atomic
from refad.errors import DataError

_SHORT, _LONG = 3, 4
FLOAT16_MAX = float(np.finfo(np.float16).max)


def float16_tiff_bytes(array: np.ndarray) -> bytes:
    """The TIFF file of an (H, W) array, stored as float16 (values beyond float16's range are
    clipped to +-65504 rather than becoming infinite)."""
    values = np.asarray(array)
    if values.ndim != 2 or 0 in values.shape:
        raise DataError(f"float16 TIFF: need a non-empty (H, W) array, got shape {values.shape}")
    height, width = values.shape
    pixels = np.clip(values.astype(np.float32), -FLOAT16_MAX, FLOAT16_MAX).astype("<f2")
    entries = [
        (256, _LONG, width), (257, _LONG, height), (258, _SHORT, 16), (259, _SHORT, 1),
        (262, _SHORT, 1), (273, _LONG, 0), (277, _SHORT, 1), (278, _LONG, height),
        (279, _LONG, pixels.nbytes), (284, _SHORT, 1), (339, _SHORT, 3),
    ]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        field = struct.pack("<HH", value, 0) if kind == _SHORT else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + field
    ifd += struct.pack("<I", 0)  # no further image
    return b"II" + struct.pack("<HI", 42, 8) + ifd + pixels.tobytes()


def write_float16_tiff(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` as a float16 TIFF, atomically (complete or absent)."""
    data = float16_tiff_bytes(array)
    write_atomic(Path(path), lambda tmp: tmp.write_bytes(data))
