"""Image and mask decoding: every PIL mode we promise, content-based decoding, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_data import write_rgb
from PIL import Image

from refad.data.images import image_size, read_image_rgb, read_mask
from refad.errors import DataError


def _save(img: Image.Image, path: Path, fmt: str | None = None) -> Path:
    img.save(path, format=fmt)
    return path


def _reopened_mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def test_rgb_roundtrip_png(tmp_path):
    pixels = write_rgb(tmp_path / "a.png", (5, 7))
    out = read_image_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, pixels)


def test_grey_l_becomes_three_equal_channels(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = _save(Image.fromarray(grey), tmp_path / "g.png")
    out = read_image_rgb(path)
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_one_bit_maps_to_0_and_255(tmp_path):
    bits = np.array([[True, False, True], [False, False, True]])
    path = _save(Image.fromarray(bits), tmp_path / "b.png")
    assert _reopened_mode(path) == "1"
    out = read_image_rgb(path)
    np.testing.assert_array_equal(out[:, :, 0], np.where(bits, 255, 0))
    np.testing.assert_array_equal(out[:, :, 2], out[:, :, 0])


def test_palette_uses_palette_colours(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), mode="P")
    img.putpalette([0, 0, 0, 10, 200, 30, 250, 5, 7] + [0] * (768 - 9))
    path = _save(img, tmp_path / "p.png")
    assert _reopened_mode(path) == "P"
    out = read_image_rgb(path)
    np.testing.assert_array_equal(out[0, 1], [10, 200, 30])
    np.testing.assert_array_equal(out[1, 1], [250, 5, 7])
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])


def test_palette_with_transparency_keeps_colour(tmp_path):
    img = Image.new("P", (3, 2), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (768 - 6))
    img.info["transparency"] = 1
    path = _save(img, tmp_path / "pt.png")
    np.testing.assert_array_equal(read_image_rgb(path)[0, 0], [10, 200, 30])


def test_rgba_drops_alpha_without_compositing(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 20, 30
    rgba[0, :, 3] = 0  # fully transparent row keeps its stored colour
    rgba[1, :, 3] = 255
    path = _save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "a.png")
    out = read_image_rgb(path)
    assert out.shape == (2, 3, 3)
    assert (out == np.array([10, 20, 30], np.uint8)).all()


def test_la_drops_alpha(tmp_path):
    path = _save(Image.new("LA", (3, 2), (100, 0)), tmp_path / "la.png")
    assert _reopened_mode(path) == "LA"
    assert (read_image_rgb(path) == 100).all()


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_grey_scaled_by_full_range(tmp_path, suffix):
    values = np.array([[0, 257, 32768, 65535], [128, 1000, 40000, 65280]], np.uint16)
    path = _save(Image.fromarray(values), tmp_path / f"g16{suffix}")
    assert _reopened_mode(path).startswith("I;16")
    out = read_image_rgb(path)
    expected = np.round(values.astype(np.float64) / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out[0, 2, 0] == 128  # mid-range is mid-grey, not clipped to 255


def test_32bit_integer_grey_uses_16bit_range(tmp_path):
    values = np.array([[0, 65535, 32768, 70000, -5]], np.int32)
    path = _save(Image.fromarray(values), tmp_path / "i.tif")
    assert _reopened_mode(path) == "I"
    out = read_image_rgb(path)[0, :, 1]
    np.testing.assert_array_equal(out, [0, 255, 128, 255, 0])


def test_big_endian_sixteen_bit(tmp_path):
    img = Image.new("I;16B", (2, 1))
    img.putpixel((1, 0), 65535)
    path = _save(img, tmp_path / "b.tif")
    assert _reopened_mode(path) == "I;16B"
    np.testing.assert_array_equal(read_image_rgb(path)[0, :, 0], [0, 255])


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_converted(tmp_path, fmt):
    path = _save(Image.new("CMYK", (4, 3), (255, 0, 0, 0)), tmp_path / f"c.{fmt.lower()}", fmt)
    assert _reopened_mode(path) == "CMYK"
    out = read_image_rgb(path)
    assert out.shape == (3, 4, 3)
    assert out[..., 0].max() < 10 and out[..., 1:].min() > 245  # pure cyan


def test_bmp_content_behind_png_name(tmp_path):
    grey = np.full((4, 5), 77, np.uint8)
    path = _save(Image.fromarray(grey), tmp_path / "glass.png", "BMP")
    assert path.read_bytes()[:2] == b"BM"
    out = read_image_rgb(path)
    assert out.shape == (4, 5, 3) and (out == 77).all()
    assert image_size(path) == (4, 5)


def test_jpeg_behind_bmp_name(tmp_path):
    write_rgb(tmp_path / "x.bmp", (8, 8), value=90, fmt="JPEG")
    assert abs(int(read_image_rgb(tmp_path / "x.bmp").mean()) - 90) <= 2


def test_truncated_png_names_file(tmp_path):
    write_rgb(tmp_path / "full.png", (64, 64))
    data = (tmp_path / "full.png").read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_image_rgb(bad)
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg
    assert "corrupt or truncated" in msg


def test_truncated_jpeg_names_file(tmp_path):
    write_rgb(tmp_path / "full.jpg", (64, 64), fmt="JPEG")
    data = (tmp_path / "full.jpg").read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg: corrupt or truncated"):
        read_image_rgb(bad)


def test_corrupt_pixel_data_names_file(tmp_path):
    write_rgb(tmp_path / "ok.png", (32, 32))
    data = bytearray((tmp_path / "ok.png").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 40] = b"\x00" * 32  # trash the compressed stream, keep the header
    bad = tmp_path / "garbled.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match="garbled.png"):
        read_image_rgb(bad)


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(DataError, match=r"notes\.png: not an image file"):
        read_image_rgb(path)
    with pytest.raises(DataError, match="notes.png"):
        image_size(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.png: file not found"):
        read_image_rgb(tmp_path / "nothing.png")


def test_float_mode_refused(tmp_path):
    path = _save(Image.fromarray(np.zeros((2, 2), np.float32)), tmp_path / "f.tif")
    with pytest.raises(DataError, match="f.tif: unsupported image mode F"):
        read_image_rgb(path)


# ----------------------------------------------------------------------------- masks


def test_mask_8bit_threshold_is_half_range(tmp_path):
    values = np.array([[0, 1, 127, 128, 200, 255]], np.uint8)
    path = _save(Image.fromarray(values), tmp_path / "m.png")
    out = read_mask(path, (1, 6))
    assert out.dtype == bool
    np.testing.assert_array_equal(out, [[False, False, False, True, True, True]])


def test_mask_16bit_threshold(tmp_path):
    values = np.array([[0, 200, 32767, 32768, 65535]], np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(path, (1, 5)), [[0, 0, 0, 1, 1]])


def test_mask_one_bit_as_is(tmp_path):
    bits = np.array([[True, False], [False, True]])
    path = _save(Image.fromarray(bits), tmp_path / "m1.png")
    np.testing.assert_array_equal(read_mask(path, (2, 2)), bits)


def test_mask_rgb_any_channel(tmp_path):
    rgb = np.zeros((1, 4, 3), np.uint8)
    rgb[0, 1] = (255, 255, 255)
    rgb[0, 2] = (200, 0, 0)  # a red annotation counts
    rgb[0, 3] = (100, 100, 100)  # a faint edge does not
    path = _save(Image.fromarray(rgb), tmp_path / "mrgb.png")
    np.testing.assert_array_equal(read_mask(path, (1, 4)), [[0, 1, 1, 0]])


def test_mask_label_map_nonzero(tmp_path):
    labels = np.array([[0, 1, 2, 0]], np.uint8)
    path = _save(Image.fromarray(labels), tmp_path / "lab.png")
    np.testing.assert_array_equal(read_mask(path, (1, 4)), [[0, 0, 0, 0]])
    np.testing.assert_array_equal(read_mask(path, (1, 4), label_map=True), [[0, 1, 1, 0]])
    pal = Image.fromarray(labels, mode="P")
    pal.putpalette([0, 0, 0, 1, 1, 1, 2, 2, 2] + [0] * (768 - 9))
    ppath = _save(pal, tmp_path / "labp.png")
    np.testing.assert_array_equal(read_mask(ppath, (1, 4), label_map=True), [[0, 1, 1, 0]])


def test_mask_size_mismatch_names_both_files(tmp_path):
    path = _save(Image.fromarray(np.zeros((4, 6), np.uint8)), tmp_path / "m_mask.png")
    image = tmp_path / "img.png"
    with pytest.raises(DataError) as err:
        read_mask(path, (5, 6), image=image)
    msg = str(err.value)
    assert str(path) in msg and str(image) in msg
    assert "6x4" in msg and "6x5" in msg


def test_corrupt_mask_names_file(tmp_path):
    path = tmp_path / "bad_mask.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad_mask.png"):
        read_mask(path, (2, 2))
