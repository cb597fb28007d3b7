"""The loaders on real files with real quirks (../shared/data/realmix, read-only, optional)."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers_data import SHARED_DATA

from refad.data import (
    ImageDataset,
    image_size,
    list_mvtec_categories,
    mvtec_samples,
    read_image_rgb,
    read_mask,
)

REALMIX = SHARED_DATA / "realmix"

# From ../shared/data/README.md: train good, test good, test defective per defect type.
EXPECTED = {
    "magnetic_tile": (400, 100, {"blowhole": 115, "break": 85, "crack": 57, "fray": 32,
                                 "uneven": 99}),
    "ball_screw": (400, 100, {"pitting": 167}),
    "pcb": (300, 100, {"defect": 100}),
    "glass": (18, 18, {"edge": 56, "angle": 24}),
}


@pytest.fixture(scope="module")
def realmix():
    if not REALMIX.is_dir():
        pytest.skip(f"real data not present at {REALMIX} (read-only dev data, optional)")
    return REALMIX


def test_realmix_counts_headers_and_decodes(realmix):
    assert list_mvtec_categories(realmix) == sorted(EXPECTED)
    train = mvtec_samples(realmix, "train")
    test = mvtec_samples(realmix, "test")
    for cat, (n_train, n_good, defects) in EXPECTED.items():
        assert sum(s.category == cat for s in train) == n_train, cat
        assert sum(s.category == cat and s.label == 0 for s in test) == n_good, cat
        got = Counter(s.defect for s in test if s.category == cat and s.label == 1)
        assert got == defects, cat

    # Every header readable; every mask the size of its image.
    for s in train + test:
        hw = image_size(s.image)
        assert min(hw) >= 100
        if s.mask is not None:
            assert image_size(s.mask) == hw, s.mask

    # Full decodes of each quirk: grey JPEG, RGB JPEG, 1-bit PNG, BMP behind .png, RGB mask.
    picks = {}
    for s in test:
        picks.setdefault((s.category, s.label), s)
    for (_cat, label), s in sorted(picks.items()):
        rgb = read_image_rgb(s.image)
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype.name == "uint8"
        assert rgb.std() > 0, s.image
        if label:
            mask = read_mask(s.mask, rgb.shape[:2], image=s.image)
            assert 0 < mask.mean() < 0.9, s.mask
    glass_good = next(s for s in test if s.category == "glass" and s.label == 0)
    assert glass_good.image.suffix == ".png" and glass_good.image.read_bytes()[:2] == b"BM"

    # 128 px keeps even the smallest picked defect (ball_screw pitting, 98 px of 1130x460).
    ds = ImageDataset([picks[k] for k in sorted(picks)], 128, (0.5,) * 3, (0.5,) * 3)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 128, 128)
        assert (item["mask"].sum() > 0) == bool(item["label"])
