"""Tiling: tiles cover the image with the asked overlap, and stitching tiles cut from one map
gives that map back (overlaps blended, no seams), whatever the image and tile sizes."""

from __future__ import annotations

import numpy as np
import pytest

from refad.pipeline.tiling import MapStitcher, blend_window, cut_tiles, stitch, tile_grid


@pytest.mark.parametrize(("image_hw", "tile_hw", "overlap"), [
    ((640, 640), (256, 256), 0.25), ((460, 1130), (256, 256), 0.5), ((300, 200), (128, 96), 0.0),
    ((256, 256), (256, 256), 0.25), ((3000, 4000), (512, 512), 0.125)])
def test_tiles_cover_the_image_with_the_overlap(image_hw, tile_hw, overlap) -> None:
    grid = tile_grid(image_hw, tile_hw, overlap)
    covered = np.zeros(image_hw, dtype=int)
    for y, x in grid.origins:
        assert 0 <= y <= image_hw[0] - tile_hw[0] and 0 <= x <= image_hw[1] - tile_hw[1]
        covered[y : y + tile_hw[0], x : x + tile_hw[1]] += 1
    assert covered.min() >= 1
    ys = sorted({y for y, _ in grid.origins})
    steps = np.diff(ys)
    assert all(step <= tile_hw[0] * (1 - overlap) + 1 for step in steps)


def test_stitching_the_crops_of_a_map_gives_the_map_back() -> None:
    rng = np.random.default_rng(0)
    full = rng.random((460, 1130)).astype(np.float32)
    grid = tile_grid(full.shape, (256, 256), 0.25)
    tiles = np.stack(list(cut_tiles(full, grid)))
    assert tiles.shape == (len(grid), 256, 256)
    np.testing.assert_allclose(stitch(tiles, grid, 0.25), full, rtol=1e-6)


def test_a_side_shorter_than_the_tile_is_padded_and_cropped_back() -> None:
    image = np.arange(100 * 300 * 3, dtype=np.float32).reshape(100, 300, 3)
    grid = tile_grid(image.shape[:2], (128, 128), 0.5)
    tiles = list(cut_tiles(image, grid))
    assert all(t.shape == (128, 128, 3) for t in tiles)
    assert np.array_equal(tiles[0][100:], np.repeat(tiles[0][99:100], 28, axis=0))
    maps = np.stack([t[..., 0] for t in tiles])
    np.testing.assert_allclose(stitch(maps, grid, 0.5), image[..., 0], rtol=1e-6)


def test_overlaps_are_blended_without_seams() -> None:
    """Two tiles that disagree meet in a ramp, not a step: the stitched map moves from one
    tile's value to the other's over the overlap."""
    grid = tile_grid((64, 96), (64, 64), 0.5)
    assert len(grid) == 2
    maps = np.stack([np.zeros((64, 64)), np.ones((64, 64))])
    row = stitch(maps, grid, 0.5)[32]
    assert row[0] == 0 and row[-1] == 1
    assert np.all(np.diff(row) >= 0) and np.max(np.diff(row)) < 0.25


def test_the_stitcher_takes_tiles_in_batches_and_refuses_a_short_count() -> None:
    full = np.random.default_rng(1).random((300, 500))
    grid = tile_grid(full.shape, (128, 128), 0.25)
    tiles = np.stack(list(cut_tiles(full, grid)))
    stitcher = MapStitcher(grid, 0.25)
    stitcher.add(tiles[:3])
    with pytest.raises(ValueError, match="tiles were added"):
        stitcher.result()
    stitcher.add(tiles[3:])
    np.testing.assert_allclose(stitcher.result(), full, rtol=1e-6)


def test_window_is_one_inside_and_positive_at_the_border() -> None:
    window = blend_window((64, 64), 0.5)
    assert window[32, 32] == 1 and window.min() > 0 and window[0, 0] < window[8, 8]
    with pytest.raises(ValueError, match="overlap"):
        tile_grid((10, 10), (4, 4), 1.0)
