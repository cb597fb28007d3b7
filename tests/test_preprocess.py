"""refad.pipeline.preprocess: the one preprocessing of the torch and deploy paths, torch-free."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from refad.errors import ConfigError
from refad.pipeline.preprocess import (
    as_hw,
    content_size,
    preprocess,
    preprocess_batch,
    resize_mask,
    rule_text,
    size_value,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_square_stretch_is_the_rule_every_run_before_was_scored_with() -> None:
    """The square "stretch" input, written out as refad computed it before (H, W) existed."""
    rgb = _rgb(13, 17)
    old = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.Resampling.BILINEAR),
                     dtype=np.float32) / 255.0
    old = (old - np.asarray(MEAN, dtype=np.float32)) / np.asarray(STD, dtype=np.float32)
    old = np.ascontiguousarray(old.transpose(2, 0, 1))
    for size in (32, (32, 32), [32, 32]):
        got = preprocess(rgb, size, MEAN, STD)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert got.tobytes() == old.tobytes()


def test_height_width_order_and_batches() -> None:
    rgb = _rgb(40, 100)
    assert preprocess(rgb, (28, 70), MEAN, STD).shape == (3, 28, 70)
    batch = preprocess_batch([rgb, _rgb(7, 9)], [28, 70], MEAN, STD)
    assert batch.shape == (2, 3, 28, 70)
    np.testing.assert_array_equal(batch[0], preprocess(rgb, (28, 70), MEAN, STD))


def test_pad_keeps_the_aspect_ratio_top_left_and_fills_with_the_mean() -> None:
    rgb = _rgb(50, 100)  # 1:2 into a square: the top half holds the picture
    arr = preprocess(rgb, 64, MEAN, STD, "pad")
    assert content_size((50, 100), (64, 64), "pad") == (32, 64)
    assert np.all(arr[:, 32:, :] == 0) and np.any(arr[:, :32, :] != 0)
    stretched = preprocess(rgb, (32, 64), MEAN, STD)
    np.testing.assert_array_equal(arr[:, :32, :], stretched)  # the content is the same resize
    same_aspect = preprocess(rgb, (50, 100), MEAN, STD, "pad")
    np.testing.assert_array_equal(same_aspect, preprocess(rgb, (50, 100), MEAN, STD))
    assert content_size((50, 100), (64, 64)) == (64, 64)  # stretch fills everything
    assert content_size((1, 1000), (32, 32), "pad") == (1, 32)  # never an empty side


def test_masks_follow_the_picture_and_stay_binary() -> None:
    mask = np.zeros((50, 100), dtype=bool)
    mask[:, 50:] = True
    padded = resize_mask(mask, 64, "pad")
    assert padded.dtype == np.float32 and set(np.unique(padded)) <= {0.0, 1.0}
    assert padded[:32, 32:].all() and not padded[:32, :32].any() and not padded[32:].any()
    old = (np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (8, 8), Image.Resampling.NEAREST)) > 127).astype(np.float32)
    np.testing.assert_array_equal(resize_mask(mask, 8), old)


def test_sizes_and_rules_are_checked_in_one_line() -> None:
    assert as_hw(5) == (5, 5) and as_hw([4, 6]) == (4, 6) and as_hw(np.int64(3)) == (3, 3)
    assert size_value((7, 7)) == 7 and size_value((4, 6)) == [4, 6]
    for bad in (0, True, [1, 2, 3], "8", [4, 0], 2.5):
        with pytest.raises(ConfigError, match="size"):
            as_hw(bad, "size")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="resize: 'crop' is not a resize rule"):
        preprocess(_rgb(4, 4), 8, MEAN, STD, "crop")
    assert "BILINEAR" in rule_text("stretch") and "top-left" in rule_text("pad")
    assert rule_text("stretch", 64) == rule_text("stretch", (64, 64)) == rule_text("stretch")
    assert "resize((width, height)" in rule_text("stretch", (64, 160))
