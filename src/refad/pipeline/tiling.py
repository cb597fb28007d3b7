"""Tiling: cut a large image into overlapping tiles of the model's input size, and stitch the
tiles' anomaly maps back into one map at image size. Numpy only, so that every path (the torch
scorer, the exported runtimes, the server) cuts and blends the same way.

Why tiles: a defect of a few pixels on a multi-megapixel image vanishes when the whole image is
resized to the model's input; a tile of the same input size keeps it at full resolution.
Why blended overlaps: a map is least reliable at a tile's border (padding, the backbone's
receptive field), so each tile's map is weighted by a window that is 1 inside and falls off
linearly towards the border over the overlap; where tiles overlap the better-placed one counts
more, and the stitched map has no seams.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# The weight a tile's outermost pixel keeps (never 0, so a pixel that only one tile's border
# covers - the image border - is still defined).
EDGE_WEIGHT = 0.05


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie: top-left corners on the image, all tile_hw large."""

    image_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    origins: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.origins)


def _starts(side: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: as few tiles as keep every step within `stride`, spread
    evenly from 0 to flush with the far edge (equal overlaps, none thinner than asked)."""
    if side <= tile:
        return [0]
    steps = -(-(side - tile) // stride)  # ceil
    return [round(i * (side - tile) / steps) for i in range(steps + 1)]


def tile_grid(image_hw: Sequence[int], tile_hw: Sequence[int], overlap: float) -> TileGrid:
    """Tiles of `tile_hw` covering an image of `image_hw`, neighbours sharing at least
    `overlap` (a fraction of the tile, 0 <= overlap < 1). An image side smaller than the
    tile gets one tile, padded by `cut_tiles`."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap {overlap} must be in [0, 1)")
    (h, w), (th, tw) = tuple(image_hw), tuple(tile_hw)
    rows = _starts(h, th, max(1, round(th * (1 - overlap))))
    cols = _starts(w, tw, max(1, round(tw * (1 - overlap))))
    return TileGrid((h, w), (th, tw), tuple((y, x) for y in rows for x in cols))


def cut_tiles(image: np.ndarray, grid: TileGrid) -> Iterator[np.ndarray]:
    """The tiles of an (H, W, ...) array, one by one (bounded memory for any image), each
    (th, tw, ...); a side shorter than the tile is padded by repeating its edge."""
    th, tw = grid.tile_hw
    for y, x in grid.origins:
        tile = image[y : y + th, x : x + tw]
        short = (th - tile.shape[0], tw - tile.shape[1])
        if any(short):
            pad = [(0, short[0]), (0, short[1])] + [(0, 0)] * (tile.ndim - 2)
            tile = np.pad(tile, pad, mode="edge")
        yield tile


def _ramp(length: int, fade: int) -> np.ndarray:
    """1 in the middle, falling linearly to EDGE_WEIGHT over `fade` pixels at both ends."""
    weight = np.ones(length, dtype=np.float64)
    if fade > 0:
        edge = np.linspace(EDGE_WEIGHT, 1.0, fade, endpoint=False)
        weight[:fade] = np.minimum(weight[:fade], edge)
        weight[length - fade :] = np.minimum(weight[length - fade :], edge[::-1])
    return weight


def blend_window(tile_hw: Sequence[int], overlap: float) -> np.ndarray:
    """(th, tw) weights of a tile's map: separable ramps as wide as half the overlap."""
    th, tw = tuple(tile_hw)
    fy, fx = (max(0, round(side * overlap / 2)) for side in (th, tw))
    return np.outer(_ramp(th, fy), _ramp(tw, fx))


class MapStitcher:
    """Accumulates tile maps into one image-sized map (weighted mean over the overlaps); tiles
    can arrive in any batches, so only the image-sized sums are ever held."""

    def __init__(self, grid: TileGrid, overlap: float) -> None:
        self.grid = grid
        self.window = blend_window(grid.tile_hw, overlap)
        self.total = np.zeros(grid.image_hw, dtype=np.float64)
        self.weight = np.zeros(grid.image_hw, dtype=np.float64)
        self.added = 0

    def add(self, tile_maps: np.ndarray) -> None:
        """The next tiles' maps, (n, th, tw), in the grid's order."""
        h, w = self.grid.image_hw
        for tile_map in tile_maps:
            y, x = self.grid.origins[self.added]
            vh, vw = min(self.grid.tile_hw[0], h - y), min(self.grid.tile_hw[1], w - x)
            window = self.window[:vh, :vw]
            self.total[y : y + vh, x : x + vw] += window * tile_map[:vh, :vw]
            self.weight[y : y + vh, x : x + vw] += window
            self.added += 1

    def result(self) -> np.ndarray:
        """The stitched (H, W) float32 map; every tile must have been added."""
        if self.added != len(self.grid):
            raise ValueError(f"{self.added} of {len(self.grid)} tiles were added")
        return (self.total / self.weight).astype(np.float32)


def stitch(tile_maps: np.ndarray, grid: TileGrid, overlap: float) -> np.ndarray:
    """All tiles' maps (N, th, tw) of one image -> its (H, W) map."""
    stitcher = MapStitcher(grid, overlap)
    stitcher.add(tile_maps)
    return stitcher.result()
