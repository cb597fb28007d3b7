"""Scoring an image by tiles (`data.tiling`): the one place where every path - the torch
Scorer, the exported runtimes, both servers, calibration and `refad test` - scales an image,
cuts it into tiles of the model's input size, scores the tiles in batches and stitches their
maps, so that a run and its export tile identically. Numpy and PIL only.

The image is resized by `scale` (bilinear, as the preprocess resizes), cut into overlapping
tiles (`refad.pipeline.tiling`; a side shorter than a tile is padded by repeating its edge),
each tile normalised by the one preprocess, scored in batches of at most `batch_size` tiles
(bounded memory for any image the image guards let in), and the tile maps blended into one map
at the scaled image size. The image score follows the method's rule on each tile and takes the
maximum over tiles: an image is as anomalous as its worst tile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from refad.errors import ConfigError, DataError
from refad.pipeline.preprocess import ImageSize, preprocess
from refad.pipeline.tiling import MapStitcher, TileGrid, cut_tiles, tile_grid

# The decompression-bomb limit of `refad.data.images` (tests check they agree): a scaled image
# stays within what a file may hold, so its stitched map stays within bounded memory.
MAX_SCALED_PIXELS = 100_000_000
# Tiles of one image: far above any sensible setting (a 100-megapixel image in 256-px tiles at
# 0.5 overlap is about 6,000); a 32-px tile at 0.9 overlap on such an image is refused.
MAX_TILES = 200_000
MAX_OVERLAP, MAX_SCALE = 0.9, 4.0
# Tiles per model call where the caller names no batch (a server request of one image)
TILE_BATCH = 8

TileScorer = Callable[[np.ndarray], tuple[Any, Any]]
"""(n, 3, th, tw) float32 preprocessed tiles -> (maps (n, th, tw), scores (n,))."""


@dataclass(frozen=True)
class Tiling:
    """How images are tiled: `overlap` of a tile shared with its neighbour, `scale` applied
    to the image first (1.0: native resolution)."""

    overlap: float = 0.25
    scale: float = 1.0

    def __post_init__(self) -> None:
        for name, value in (("overlap", self.overlap), ("scale", self.scale)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"tiling.{name}: expected a number, got {value!r}")
        if not 0 <= self.overlap <= MAX_OVERLAP:
            raise ConfigError(f"tiling.overlap: {self.overlap} must be in [0, {MAX_OVERLAP}]")
        if not 0 < self.scale <= MAX_SCALE:
            raise ConfigError(f"tiling.scale: {self.scale} must be in (0, {MAX_SCALE:g}]")

    @classmethod
    def of(cls, section: Any) -> Tiling | None:
        """From a config section (`data.tiling`), a record (a dict) or None (no tiling)."""
        if section is None:
            return None
        if isinstance(section, Mapping):
            unknown = set(section) - {"overlap", "scale"}
            if unknown:
                raise ConfigError(f"tiling: unknown field {sorted(unknown)[0]!r}")
            return cls(**section)
        if not hasattr(section, "overlap") or not hasattr(section, "scale"):
            raise ConfigError(f"tiling: expected {{overlap, scale}}, got {section!r}")
        return cls(float(section.overlap), float(section.scale))

    def to_record(self) -> dict[str, float]:
        """The form config.json, checkpoint.json and refad-deploy.json hold."""
        return {"overlap": float(self.overlap), "scale": float(self.scale)}

    def scaled_hw(self, image_hw: Sequence[int]) -> ImageSize:
        """(height, width) of an image of `image_hw` after scaling (each side >= 1 pixel)."""
        h, w = (max(1, round(side * self.scale)) for side in image_hw[:2])
        return h, w

    def grid(self, image_hw: Sequence[int], tile_hw: ImageSize) -> TileGrid:
        """The tiles of an image of `image_hw` (before scaling); refused in one line when the
        scaled image or its tile count is beyond the guards."""
        scaled = self.scaled_hw(image_hw)
        if scaled[0] * scaled[1] > MAX_SCALED_PIXELS:
            raise DataError(f"tiling.scale: {self.scale:g} makes a {image_hw[1]}x{image_hw[0]} "
                            f"image larger than {MAX_SCALED_PIXELS / 1e6:g} megapixels")
        grid = tile_grid(scaled, tile_hw, self.overlap)
        if len(grid) > MAX_TILES:
            raise DataError(f"tiling: a {image_hw[1]}x{image_hw[0]} image gives {len(grid)} "
                            f"tiles, more than {MAX_TILES} (lower tiling.overlap or scale)")
        return grid


def scaled_image(rgb: np.ndarray, tiling: Tiling) -> np.ndarray:
    """The (h, w, 3) uint8 image resized by `tiling.scale` (bilinear; itself at 1.0)."""
    h, w = tiling.scaled_hw(rgb.shape)
    if (h, w) == rgb.shape[:2]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))


def tile_batches(
    rgb: np.ndarray,
    tiling: Tiling,
    tile_hw: ImageSize,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
) -> tuple[TileGrid, Iterator[np.ndarray]]:
    """(the grid, a lazy stream of (n <= batch_size, 3, th, tw) preprocessed tiles in the
    grid's order) of one image: at most one batch of tiles is held at a time."""
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be at least 1, got {batch_size}")
    grid = tiling.grid(rgb.shape, tile_hw)

    def batches() -> Iterator[np.ndarray]:
        chunk: list[np.ndarray] = []
        for tile in cut_tiles(scaled_image(rgb, tiling), grid):
            chunk.append(preprocess(np.ascontiguousarray(tile), tile_hw, mean, std))
            if len(chunk) == batch_size:
                yield np.stack(chunk)
                chunk = []
        if chunk:
            yield np.stack(chunk)

    return grid, batches()


class TiledImages:
    """Tile maps and scores of several images, in order, arriving in batches of any size
    (tiles of one image may span batches) -> each image's stitched map and max tile score,
    as soon as its last tile is in. Holds one image's sums at a time."""

    def __init__(self, grids: Sequence[TileGrid], overlap: float) -> None:
        self.grids, self.overlap = list(grids), overlap
        self._image = 0
        self._stitcher: MapStitcher | None = None
        self._score = -np.inf

    def add(self, maps: Any, scores: Any) -> list[tuple[np.ndarray, float]]:
        """The next tiles' (n, th, tw) maps and (n,) scores -> the images they complete."""
        maps = np.asarray(maps, dtype=np.float32)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if maps.shape[0] != scores.size:
            raise ValueError(f"{maps.shape[0]} tile maps for {scores.size} tile scores")
        done: list[tuple[np.ndarray, float]] = []
        start = 0
        while start < scores.size:
            if self._image >= len(self.grids):
                raise ValueError("more tiles than the grids hold")
            if self._stitcher is None:
                self._stitcher = MapStitcher(self.grids[self._image], self.overlap)
            take = min(len(self._stitcher.grid) - self._stitcher.added, scores.size - start)
            self._stitcher.add(maps[start : start + take])
            # np.max keeps a NaN: a diverged tile makes the image's result non-finite
            self._score = float(np.max(np.append(scores[start : start + take], self._score)))
            start += take
            if self._stitcher.added == len(self._stitcher.grid):
                done.append((self._stitcher.result(), self._score))
                self._image += 1
                self._stitcher, self._score = None, -np.inf
        return done


def score_tiled(
    rgb: np.ndarray,
    tiling: Tiling,
    tile_hw: ImageSize,
    mean: Sequence[float],
    std: Sequence[float],
    score_tiles: TileScorer,
    batch_size: int = TILE_BATCH,
) -> tuple[np.ndarray, float]:
    """One (h, w, 3) uint8 image -> (its stitched (H, W) float32 map at the scaled size, its
    score: the maximum of the tiles' scores). `score_tiles` is the model: the torch Scorer or
    an exported graph, so both tile the same way."""
    grid, batches = tile_batches(rgb, tiling, tile_hw, mean, std, batch_size)
    images = TiledImages([grid], tiling.overlap)
    done: list[tuple[np.ndarray, float]] = []
    for batch in batches:
        done.extend(images.add(*score_tiles(batch)))
    return done[0]
