"""Torch view of a list of samples: decoded, resized, normalised tensors plus their ground truth."""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from refad.data.images import (
    check_regular_file,
    empty_mask_reason,
    image_size,
    read_image_and_orientation,
    read_image_rgb,
    read_mask_levels,
)
from refad.data.samples import Sample
from refad.errors import ConfigError, DataError
from refad.pipeline.preprocess import as_hw, check_rule, preprocess, resize_mask
from refad.pipeline.tiled import Tiling, scaled_image
from refad.pipeline.tiling import TileGrid, cut_tiles

_FINGERPRINT_VERSION = "refad-samples-v2"  # v2: file contents, not size and mtime


def _channel_triplet(name: str, values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name}: need 3 finite numbers (R, G, B), got {list(values)!r}")
    return arr


def image_tensor(
    rgb: np.ndarray,
    size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    resize: str = "stretch",
) -> torch.Tensor:
    """(h, w, 3) uint8 RGB -> (3, H, W) float32 tensor of `refad.pipeline.preprocess.preprocess`
    (the one preprocessing of every image refad scores, shared with the torch-free paths)."""
    return torch.from_numpy(preprocess(rgb, size, mean, std, resize))


def check_mask_label(sample: Sample, mask: np.ndarray) -> None:
    """Refuse a binarised mask that contradicts its image's label.

    Either case would change the pixel metrics without a word: defect pixels on a good image
    count as missed defects, and a defective image with an empty mask (often a 0/1 mask stored
    as 8-bit, so nothing passes > 127) adds no defect pixel at all.
    """
    count = int(np.count_nonzero(mask))
    if sample.label == 0 and count:
        raise DataError(f"{sample.mask}: mask of a good image has {count} defect pixels")
    if sample.label == 1 and count == 0:
        reason = empty_mask_reason(sample.mask, label_map=sample.mask_is_label_map)
        raise DataError(f"{sample.mask}: mask of a defective image is empty: {reason}")


def sample_mask(
    sample: Sample, image_hw: tuple[int, int], size: tuple[int, int], resize: str = "stretch"
) -> tuple[torch.Tensor, int]:
    """A sample's (1, H, W) mask at `size` (binarised at full resolution, then resized by the
    rule, nearest neighbour; zeros without a mask file) and its count of soft pixels: the
    one mask step of the untiled dataset and of tiled evaluation."""
    if sample.mask is None:
        return torch.zeros((1, *size), dtype=torch.float32), 0
    full, soft = read_mask_levels(
        sample.mask, image_hw, image=sample.image, label_map=sample.mask_is_label_map
    )
    check_mask_label(sample, full)
    return torch.from_numpy(resize_mask(full, size, resize)[None]), soft


def tiled_test_item(sample: Sample, tiling: Tiling) -> dict:
    """A test image read whole for tiled scoring (`refad test` with `data.tiling`): its
    (h, w, 3) uint8 pixels and its mask at the scaled image size, where its stitched map is."""
    if sample.mask is None:
        rgb, orientation = read_image_rgb(sample.image), 1
    else:  # as ImageDataset: a mask drawn on the turned picture would not match the pixels
        rgb, orientation = read_image_and_orientation(sample.image)
    hw = (rgb.shape[0], rgb.shape[1])
    mask, soft = sample_mask(sample, hw, tiling.scaled_hw(hw))
    return {"rgb": rgb, "mask": mask, "soft_mask_pixels": soft,
            "turned_mask": orientation != 1, "label": int(sample.label)}


class ImageDataset(Dataset):
    """Images brought to ``size`` (an integer: square; else (height, width)) by the ``resize``
    rule of `refad.pipeline.preprocess` and normalised per channel.

    ``mean`` / ``std`` are in the 0..1 pixel scale (ImageNet: 0.485.. / 0.229..). Masks are
    binarised at their full resolution first, then resized with NEAREST by the same rule, so
    they stay in {0, 1} and on the input's pixels;
    a mask that contradicts its label is refused (:func:`check_mask_label`).
    Holds only paths and numbers, so it pickles into DataLoader worker processes.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        resize: str = "stretch",
    ) -> None:
        if isinstance(size, bool) or isinstance(size, int) and size < 1:
            raise ConfigError(f"size: must be a positive integer, got {size!r}")
        self.samples: tuple[Sample, ...] = tuple(samples)
        self.size: tuple[int, int] = as_hw(size, "size")
        self.resize = check_rule(resize)
        self.mean = _channel_triplet("mean", mean)
        self.std = _channel_triplet("std", std)
        if np.any(self.std <= 0):
            raise ConfigError(f"std: every value must be > 0, got {list(std)!r}")

    def __len__(self) -> int:
        return len(self.samples)

    def _mask_tensor(self, sample: Sample, hw: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """The mask at the model's size, and its count of soft (neither empty nor full) pixels."""
        return sample_mask(sample, hw, self.size, self.resize)

    def __getitem__(self, i: int) -> dict:
        index = operator.index(i)
        if index < 0:
            index += len(self.samples)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {i} out of range for {len(self.samples)} samples")
        sample = self.samples[index]
        if sample.mask is None:
            rgb, orientation = read_image_rgb(sample.image), 1
        else:  # a mask drawn on the picture as a viewer turns it would not match the pixels
            rgb, orientation = read_image_and_orientation(sample.image)
        mask, soft = self._mask_tensor(sample, (rgb.shape[0], rgb.shape[1]))
        return {
            "image": image_tensor(rgb, self.size, self.mean, self.std, self.resize),
            "mask": mask,
            "soft_mask_pixels": soft,
            "turned_mask": orientation != 1,
            "label": int(sample.label),
            "category": sample.category,
            "path": str(sample.image),
            "index": index,
        }


class TileDataset(Dataset):
    """The tiles of images (`data.tiling`), each one item: the normal images' tiles are the
    training samples, as `refad.pipeline.tiled` cuts them when scoring. Items come image by
    image in grid order (deterministic); `grids[i]` and `owners` say which tiles are whose.

    Grids are planned from the files' headers; an item decodes its image once for all its
    tiles while they are read in order (one image is kept), so a batch costs one decode.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        tiling: Tiling,
        tile_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.samples: tuple[Sample, ...] = tuple(samples)
        self.tiling = tiling
        self.size: tuple[int, int] = as_hw(tile_size, "size")
        self.mean = _channel_triplet("mean", mean)
        self.std = _channel_triplet("std", std)
        if np.any(self.std <= 0):
            raise ConfigError(f"std: every value must be > 0, got {list(std)!r}")
        self.grids: list[TileGrid] = [tiling.grid(image_size(s.image), self.size)
                                      for s in self.samples]
        self.owners: list[tuple[int, int]] = [(i, t) for i, grid in enumerate(self.grids)
                                              for t in range(len(grid))]
        self._held: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.owners)

    def _scaled(self, index: int) -> np.ndarray:
        if self._held is None or self._held[0] != index:
            rgb = read_image_rgb(self.samples[index].image)
            if rgb.shape[:2] != self.grids[index].image_hw and self.tiling.scale == 1:
                raise DataError(f"{self.samples[index].image}: changed size while read")
            self._held = (index, scaled_image(rgb, self.tiling))
        return self._held[1]

    def __getitem__(self, i: int) -> dict:
        image, tile = self.owners[operator.index(i)]
        grid = self.grids[image]
        one = TileGrid(grid.image_hw, grid.tile_hw, (grid.origins[tile],))
        pixels = next(cut_tiles(self._scaled(image), one))
        sample = self.samples[image]
        return {
            "image": torch.from_numpy(preprocess(np.ascontiguousarray(pixels), self.size,
                                                 self.mean, self.std)),
            "label": int(sample.label),
            "category": sample.category,
            "path": str(sample.image),
            "index": image,
        }


def _file_key(path: Path) -> str:
    """Where a file is and what it holds. Its bytes, not its size and modification time: an
    image edited in place to the same size with its time restored (os.utime, a copy tool, a
    coarse file system) kept its key, and training reused the features of the old pixels.
    Hashing reads each file once, far less work than decoding and a backbone pass."""
    check_regular_file(Path(path))  # a FIFO swapped in since the listing would wait forever
    try:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({type(exc).__name__})") from None
    return f"{Path(path).resolve()}|{digest}"


def samples_fingerprint(samples: Sequence[Sample]) -> str:
    """SHA-256 hex of every sample's (path, file contents, label, category, defect, mask file).

    Order-sensitive on purpose: cached features are stored in sample order. Changes whenever a
    file's bytes change, so a stale feature cache is never reused.
    """
    digest = hashlib.sha256(_FINGERPRINT_VERSION.encode())
    for s in samples:
        mask_key = _file_key(s.mask) if s.mask is not None else "-"
        line = (
            f"{_file_key(s.image)}\t{s.label}\t{s.category}\t{s.defect}\t{mask_key}"
            f"\t{int(s.mask_is_label_map)}\n"
        )
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
