"""Decode images and ground-truth masks from disk into plain numpy arrays.

Files are decoded by their content (PIL picks the format from the magic bytes, so BMP data behind a
``.png`` name works) and every failure becomes a one-line :class:`DataError` naming the file.

Conversions, chosen so that every supported file maps to one well-defined RGB uint8 picture:

* ``1`` (1-bit), ``L`` (grey), ``P`` (palette), ``CMYK``, ``YCbCr``, ``RGBX``... -> PIL's RGB
  conversion.
* ``RGBA`` / ``LA`` / ``PA``: the alpha channel is DROPPED (colour values kept as stored, no
  compositing). This is what OpenCV-based inspection pipelines see, and it keeps the pixels of a
  product photo unchanged when a tool merely added an opaque alpha plane.
* 16-bit grey (``I;16*``) and 32-bit integer (``I``) grey: scaled from the 16-bit range 0..65535 to
  0..255 with rounding (values outside 0..65535 in ``I`` images are clipped first).
* Float (``F``) images have no agreed range and are refused.

EXIF orientation is NOT applied: masks are drawn on the stored pixels, so images must stay aligned
with them.

Decompression bombs: a file whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels is
refused from its header, before any pixel is decoded (a 1-bit PNG of 20000x20000 is a few tens of
KB on disk and 400 MB once decoded). PIL's own guard is superseded: its warning (from 89.5 MP) is
silenced because our limit decides, and its error (from 179 MP, raised while the header is read)
becomes the same one-line :class:`DataError`.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from refad.errors import DataError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm"}
)
"""Suffixes (lower case) that folder listings treat as images; decoding never trusts them."""

MAX_IMAGE_PIXELS = 100_000_000
"""Largest width x height that is decoded (100 MP: a 10000x10000 picture, 300 MB as RGB uint8)."""

_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def is_image_file(path: Path) -> bool:
    """True for a visible regular file whose suffix is a known image suffix (case-insensitive)."""
    return is_image_entry(path) and path.is_file()


def is_image_entry(path: Path) -> bool:
    """A visible entry named like an image that is not a folder: an image file, or something
    put where an image belongs (a FIFO, a device, a dangling link). Listings keep the latter
    so that it is named ("not a regular file"), never skipped without a word."""
    return (
        not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.is_dir()
    )


def check_regular_file(path: Path) -> None:
    """Refuse, from its status alone, a path that is missing or not a regular file: opening
    a FIFO would wait for a writer forever, a device would be read without end."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message with the whitespace folded."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _too_many_pixels(path: Path, size: tuple[int, int]) -> DataError:
    width, height = size
    return DataError(
        f"{path}: {width}x{height} pixels is more than the limit of "
        f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels"
    )


def _checked_size(exc: BaseException) -> tuple[int, int] | None:
    """The (width, height) PIL's bomb check refused, read from the frame that raised.

    PIL raises before it hands back the image, so the declared size is only in that frame;
    None when PIL changes that (the message then quotes PIL's own text).
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    size = tb.tb_frame.f_locals.get("size") if tb is not None else None
    if isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return size
    return None


def _bomb_error(path: Path, exc: BaseException) -> DataError:
    size = _checked_size(exc)
    if size is not None:
        return _too_many_pixels(path, size)
    return DataError(
        f"{path}: more than the limit of {MAX_IMAGE_PIXELS / 1e6:g} megapixels "
        f"({one_line(exc)})"
    )


def _open(path: Path, *, decode: bool) -> Image.Image:
    """Open ``path`` with PIL (format from content); with ``decode`` force a full pixel decode.

    The pixel count is checked from the header before anything is decoded (see module doc).
    """
    path = Path(path)
    check_regular_file(path)
    try:
        with warnings.catch_warnings():  # our limit decides, not PIL's lower warning level
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except _BOMB_ERRORS as exc:
        raise _bomb_error(path, exc) from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (format not recognised)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open image ({one_line(exc)})") from None
    if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
        img.close()
        raise _too_many_pixels(path, img.size)
    if decode:
        _decode(img, path)
    return img


def _decode(img: Image.Image, path: Path) -> None:
    """Decode every pixel now, so a broken file fails here with its name."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except _BOMB_ERRORS as exc:  # some formats check frame sizes again while decoding
        img.close()
        raise _bomb_error(path, exc) from None
    except Exception as exc:  # PIL plugins raise many types (OSError, SyntaxError, ...)
        img.close()
        raise DataError(f"{path}: corrupt or truncated image ({one_line(exc)})") from None


EXIF_ORIENTATION = 0x0112


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag of an image (1, the stored pixels as they are, when absent),
    read from the header only. refad does not apply it (module doc); callers report it where a
    mask drawn on the displayed picture would no longer match."""
    with _open(path, decode=False) as img:
        return _orientation_of(img)


def _orientation_of(img: Image.Image) -> int:
    value = img.getexif().get(EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image read from its header only (cheap; does not validate the pixel data)."""
    with _open(path, decode=False) as img:
        width, height = img.size
    return height, width


def _sixteen_bit_to_uint8(img: Image.Image) -> np.ndarray:
    values = np.asarray(img).astype(np.int64)
    values = np.clip(values, 0, 65535)
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def rgb_array(img: Image.Image, path: Path | str) -> np.ndarray:
    """A decoded PIL image -> (H, W, 3) uint8 RGB by the module's mode rules; `path` names it."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode == "P" and "transparency" in img.info:
        mode = "PA"  # same route as alpha images (PIL warns on a direct P -> RGB here)
    if mode in _SIXTEEN_BIT_MODES:
        grey = _sixteen_bit_to_uint8(img)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise DataError(f"{path}: unsupported image mode F (32-bit float has no defined range)")
    try:
        if mode in _ALPHA_MODES:  # keep the stored colour, drop the alpha plane
            return np.asarray(img.convert("RGBA"), dtype=np.uint8)[:, :, :3].copy()
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: unsupported image mode {mode} ({one_line(exc)})") from None


def read_image_rgb(path: Path) -> np.ndarray:
    """Decode ``path`` fully and return it as an (H, W, 3) uint8 RGB array (see module doc)."""
    path = Path(path)
    with _open(path, decode=True) as img:
        return rgb_array(img, path)


def read_image_and_orientation(path: Path) -> tuple[np.ndarray, int]:
    """`read_image_rgb` and `exif_orientation` from one opening of the file (a test image with
    a mask needs both; reading the header again cost a second open per image)."""
    path = Path(path)
    with _open(path, decode=True) as img:
        return rgb_array(img, path), _orientation_of(img)


def _mask_values(img: Image.Image, path: Path) -> tuple[np.ndarray, float, float]:
    """(values, cut, full) of an intensity mask: a pixel is set when its value > cut; ``full``
    is the value a set pixel should be stored as (255 for 8-bit, 65535 for 16-bit...)."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.uint8), 0, 1
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(img), 32767, 65535
    if mode == "F":
        return np.asarray(img, dtype=np.float32), 0.5, 1.0
    if mode == "L":
        return np.asarray(img, dtype=np.uint8), 127, 255
    if mode == "LA":
        return np.asarray(img, dtype=np.uint8)[:, :, 0], 127, 255
    try:  # colour masks (RGB, RGBA, P, CMYK...): a pixel is set when any colour channel is
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: unsupported mask mode {mode} ({one_line(exc)})") from None
    return rgb.max(axis=2), 127, 255


def _label_values(img: Image.Image) -> np.ndarray:
    """The label of each pixel of a label-map mask (0 is background)."""
    mode = img.mode
    if mode in ("RGB", "RGBA", "CMYK", "RGBX"):
        return np.asarray(img.convert("RGB")).max(axis=2)
    if mode in ("LA", "PA"):
        return np.asarray(img)[:, :, 0]
    return np.asarray(img)  # palette masks hold label indices; grey/16-bit hold label values


def _mask_to_bool(img: Image.Image, path: Path, label_map: bool) -> np.ndarray:
    """Binarise a decoded mask: > half of its value range, or != 0 for label maps."""
    if label_map:
        return _label_values(img) != 0
    values, cut, _ = _mask_values(img, path)
    return values > cut


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def empty_mask_reason(path: Path, *, label_map: bool = False) -> str:
    """Why a mask has no set pixel, for the error about a defective image's empty mask.

    Re-reads the file (only on that error path). The usual mistake is a 0/1 mask stored in
    8 bits: every value is at or below the cut, so the message says how to store it.
    """
    if label_map:  # != 0 found nothing
        return "all pixels are 0"
    path = Path(path)
    with _open(path, decode=True) as img:
        values, cut, full = _mask_values(img, path)
    if not values.any():
        return "all pixels are 0"
    low, high = values.min().item(), values.max().item()
    return (
        f"it holds values {_number(low)}..{_number(high)}; store masks as 0/{_number(full)} "
        f"(binarised at > {_number(cut)})"
    )


def read_mask(
    path: Path,
    expected_hw: tuple[int, int],
    *,
    image: Path | None = None,
    label_map: bool = False,
) -> np.ndarray:
    """The (H, W) bool mask of ``path`` (see `read_mask_levels`, which also counts soft
    pixels)."""
    return read_mask_levels(path, expected_hw, image=image, label_map=label_map)[0]


def read_mask_levels(
    path: Path,
    expected_hw: tuple[int, int],
    *,
    image: Path | None = None,
    label_map: bool = False,
) -> tuple[np.ndarray, int]:
    """Decode a ground-truth mask to an (H, W) bool array, checking it matches its image's size.

    Binarised at > 0.5 of the value range (> 127 for 8-bit, > 32767 for 16-bit, 1-bit as is; a
    colour mask counts a pixel when any channel passes) so soft anti-aliased edges do not grow the
    defect. ``label_map=True`` is for masks that store label indices (VisA's release: 0 background,
    1, 2, ... defect regions), where any non-zero value is a defect. ``image`` only serves to name
    the image in the size-mismatch error.

    Also returns how many pixels hold a value strictly between empty and full (soft edges,
    or a mask that is not binary at all); evaluation reports them, since the cut decides them.
    """
    path = Path(path)
    with _open(path, decode=True) as img:
        if label_map:
            mask, soft = _label_values(img) != 0, 0
        else:
            values, cut, full = _mask_values(img, path)
            mask = values > cut
            soft = int(np.count_nonzero((values > 0) & (values < full)))
    expected = (int(expected_hw[0]), int(expected_hw[1]))
    if mask.shape != expected:
        got = f"{mask.shape[1]}x{mask.shape[0]}"
        want = f"{expected[1]}x{expected[0]}"
        owner = f"image {image}" if image is not None else "its image"
        turned = 1
        if image is not None:
            with contextlib.suppress(DataError):  # the name serves the message; reading it may not
                turned = exif_orientation(image)
        hint = (f"; the image carries EXIF orientation {turned}, which refad does not apply: "
                "masks must match the stored pixels") if turned != 1 else ""
        raise DataError(f"{path}: mask size {got} (WxH) differs from {owner} size {want}{hint}")
    return mask, soft
