"""ImageDataset tensors and samples_fingerprint."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from helpers_data import box_mask, make_mvtec_category, write_mask, write_rgb
from PIL import Image

from refad.data import ImageDataset, Sample, mvtec_samples, samples_fingerprint
from refad.errors import ConfigError, DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def test_height_width_sizes_and_the_pad_rule_reach_images_and_masks(tmp_path):
    """(height, width) input; "pad" keeps a 10 x 20 picture's aspect ratio in a 16 x 16 input
    (content 8 x 16 on top, the rest filled with the mean: 0 after normalisation), and its mask
    lands on the same pixels."""
    write_rgb(tmp_path / "d.png", (10, 20), seed=1)
    mask = np.zeros((10, 20), bool)
    mask[:, 10:] = True
    write_mask(tmp_path / "d_mask.png", mask)
    sample = Sample(tmp_path / "d.png", "c", 1, tmp_path / "d_mask.png", "x")
    item = ImageDataset([sample], (8, 24), MEAN, STD)[0]
    assert item["image"].shape == (3, 8, 24) and item["mask"].shape == (1, 8, 24)
    padded = ImageDataset([sample], 16, MEAN, STD, "pad")[0]
    assert padded["image"].shape == (3, 16, 16) and torch.all(padded["image"][:, 8:] == 0)
    assert padded["mask"][0, :8, 8:].all() and not padded["mask"][0, :8, :8].any()
    assert not padded["mask"][0, 8:].any()
    with pytest.raises(ConfigError, match="resize: 'crop' is not a resize rule"):
        ImageDataset([sample], 16, MEAN, STD, "crop")


def test_item_shapes_types_and_normalisation(tmp_path):
    write_rgb(tmp_path / "a.png", (10, 14), value=128)
    ds = ImageDataset([Sample(tmp_path / "a.png", "cat", 0, None, "good")], 8, MEAN, STD)
    item = ds[0]
    assert set(item) == {"image", "mask", "soft_mask_pixels", "turned_mask", "label", "category",
                         "path", "index"}
    assert item["turned_mask"] is False  # no mask, so no mask drawn on a turned picture
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 8, 8) and item["mask"].dtype == torch.float32
    assert item["label"] == 0 and item["category"] == "cat" and item["index"] == 0
    assert item["path"] == str(tmp_path / "a.png")
    expected = (128 / 255 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(item["image"].mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    assert float(item["mask"].abs().sum()) == 0


def test_image_resize_matches_pil_bilinear(tmp_path):
    pixels = write_rgb(tmp_path / "r.png", (20, 30), seed=3)
    ds = ImageDataset([Sample(tmp_path / "r.png", "c", 0, None, "good")], 16, (0, 0, 0), (1, 1, 1))
    ref = Image.fromarray(pixels).resize((16, 16), Image.Resampling.BILINEAR)
    ref_arr = np.asarray(ref, np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(ds[0]["image"].numpy(), ref_arr, atol=1e-6)


def test_mask_binarised_before_nearest_resize(tmp_path):
    write_rgb(tmp_path / "d.png", (16, 16))
    soft = np.zeros((16, 16), np.uint8)
    soft[:8, :8] = 255  # the defect
    soft[8:, 8:] = 100  # a faint soft edge region: below half range, never a defect
    Image.fromarray(soft).save(tmp_path / "d_mask.png")
    sample = Sample(tmp_path / "d.png", "c", 1, tmp_path / "d_mask.png", "crack")
    mask = ImageDataset([sample], 8, MEAN, STD)[0]["mask"][0]
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}
    expected = np.zeros((8, 8), np.float32)
    expected[:4, :4] = 1
    np.testing.assert_array_equal(mask.numpy(), expected)


def test_mask_size_mismatch_reports_both(tmp_path):
    write_rgb(tmp_path / "d.png", (16, 16))
    write_mask(tmp_path / "d_mask.png", np.ones((15, 16), bool))
    ds = ImageDataset([Sample(tmp_path / "d.png", "c", 1, tmp_path / "d_mask.png", "x")], 8,
                      MEAN, STD)
    with pytest.raises(DataError) as err:
        ds[0]
    assert "d_mask.png" in str(err.value) and str(tmp_path / "d.png") in str(err.value)


def test_index_handling_and_bad_config(tmp_path):
    write_rgb(tmp_path / "a.png", (4, 4))
    ds = ImageDataset([Sample(tmp_path / "a.png", "c", 0, None, "good")] * 2, 4, MEAN, STD)
    assert len(ds) == 2 and ds[-1]["index"] == 1
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(ConfigError, match="std"):
        ImageDataset([], 4, MEAN, (1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="mean"):
        ImageDataset([], 4, (0.5, 0.5), STD)
    with pytest.raises(ConfigError, match="size"):
        ImageDataset([], 0, MEAN, STD)


def test_pickles_and_works_with_dataloader_workers(tmp_path):
    make_mvtec_category(tmp_path, "bolt", n_good=2, defects={"bent": 2}, hw=(10, 12))
    ds = ImageDataset(mvtec_samples(tmp_path, "test"), 8, MEAN, STD)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2]["image"], ds[2]["image"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8)]
    assert torch.cat([b["label"] for b in batches]).tolist() == [1, 1, 0, 0]
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2, 3]
    assert batches[0]["mask"].sum() > 0 and batches[1]["mask"].sum() == 0


def test_fingerprint_tracks_files_labels_and_order(tmp_path):
    make_mvtec_category(tmp_path, "nut", n_train=3)
    samples = mvtec_samples(tmp_path, "train")
    first = samples_fingerprint(samples)
    assert first == samples_fingerprint(mvtec_samples(tmp_path, "train"))
    assert len(first) == 64
    assert samples_fingerprint(samples[::-1]) != first
    assert samples_fingerprint(samples[:2]) != first
    relabeled = [Sample(s.image, "other", s.label, s.mask, s.defect) for s in samples]
    assert samples_fingerprint(relabeled) != first
    stat = samples[1].image.stat()
    os.utime(samples[1].image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert samples_fingerprint(samples) == first  # touched, same bytes: the same features
    # edited in place: same size, its time put back (the old key, size and mtime, stayed the
    # same, and a feature cache served the old pixels' features)
    stat = samples[1].image.stat()
    data = bytearray(samples[1].image.read_bytes())
    data[-20] ^= 0xFF
    samples[1].image.write_bytes(bytes(data))
    os.utime(samples[1].image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert samples[1].image.stat().st_size == stat.st_size
    assert samples_fingerprint(samples) != first
    samples[0].image.unlink()
    with pytest.raises(DataError, match="000.png"):
        samples_fingerprint(samples)


def test_a_defective_image_is_opened_once(tmp_path, monkeypatch):
    """The image of a sample with a mask was opened twice: once for its pixels, once more for
    its EXIF orientation (the turned-mask note)."""
    pixels = write_rgb(tmp_path / "d.png", (16, 16))
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # shown turned by a quarter: refad reports it, never applies it
    image.save(tmp_path / "d.png", exif=exif)
    write_mask(tmp_path / "d_mask.png", box_mask((16, 16)))
    sample = Sample(tmp_path / "d.png", "c", 1, tmp_path / "d_mask.png", "crack")
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(
        fp, *a, **k))
    item = ImageDataset([sample], 8, MEAN, STD)[0]
    assert item["turned_mask"] is True
    assert opened.count(str(tmp_path / "d.png")) == 1, opened
