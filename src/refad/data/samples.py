"""The record every dataset layout produces, plus the folder helpers the layouts share."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from refad.data.images import IMAGE_EXTENSIONS, check_regular_file, is_image_entry
from refad.errors import ConfigError, DataError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset, with what evaluation needs to know about it.

    ``mask`` None means an all-zero mask, which only makes sense for a normal image.
    ``mask_is_label_map`` marks masks that store label indices (VisA's release) rather than 0/255
    intensities, so they are binarised at != 0 instead of > half range.
    """

    image: Path
    category: str
    label: int
    mask: Path | None
    defect: str
    mask_is_label_map: bool = False

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise DataError(f"{self.image}: label must be 0 (normal) or 1 (anomalous), got "
                            f"{self.label!r}")
        if self.label == 1 and self.mask is None:
            raise DataError(f"{self.image}: anomalous image has no ground-truth mask")
        check_category_name(self.category, str(self.image))


def check_category_name(name: str, where: str) -> None:
    """A category names a folder of a per-category run (`categories/<name>`): '../x' or an
    absolute path there wrote checkpoints over another run. One plain folder name only."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise DataError(f"{where}: category {name!r} is not a plain name (one folder name, "
                        "without '/', '\\' or '..')")


def check_split(split: str) -> None:
    """Refuse anything but 'train' / 'test' early, with the allowed values in the message."""
    if split not in SPLITS:
        raise ConfigError(f"split: must be 'train' or 'test', got {split!r}")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; DataError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    for p in entries:  # an image the user put there but that cannot be read is not skipped
        if p.is_symlink() and not p.exists() and p.suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(f"{p}: dangling symbolic link (its target {os.readlink(p)} is gone)")
    images = [p for p in entries if is_image_entry(p)]
    for p in images:  # a FIFO named like an image was skipped without a word
        check_regular_file(p)
    if not images:
        raise DataError(f"{folder}: folder holds no images")
    return images


def find_mask(mask_dir: Path, image: Path) -> Path | None:
    """The mask for ``image`` in ``mask_dir``: ``STEM_mask.*`` or ``STEM.*`` (any image suffix).

    ``STEM_mask`` wins over ``STEM``; two files of the same preferred name with different
    suffixes are ambiguous and raise a DataError naming both. None when nothing matches.
    """
    return MaskIndex(mask_dir).lookup(Path(image))


class MaskIndex:
    """Stem -> file lookup for one mask folder, built once (folders can hold thousands of files)."""

    def __init__(self, mask_dir: Path | None) -> None:
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        self._by_stem: dict[str, list[Path]] = {}
        if self.mask_dir is not None and self.mask_dir.is_dir():
            for p in sorted(self.mask_dir.iterdir()):
                if is_image_entry(p):
                    check_regular_file(p)  # a FIFO mask: named, never hashed (that waits)
                    self._by_stem.setdefault(p.stem, []).append(p)

    def lookup(self, image: Path) -> Path | None:
        """The rule of :func:`find_mask`, against the indexed folder."""
        for wanted in (f"{image.stem}_mask", image.stem):
            hits = self._by_stem.get(wanted, [])
            if len(hits) > 1:
                raise DataError(f"{hits[0]}: ambiguous mask for {image}, also {hits[1]}")
            if hits:
                return hits[0]
        return None

    def require(self, image: Path) -> Path:
        """The mask of a defective image; a DataError naming the image when there is none."""
        found = self.lookup(image)
        if found is None:
            where = self.mask_dir if self.mask_dir is not None else "(no mask folder given)"
            raise DataError(
                f"{image}: defective image has no mask in {where} "
                f"(looked for {image.stem}_mask.* and {image.stem}.*)"
            )
        if found.resolve() == image.resolve():
            raise DataError(f"{image}: is its own mask (the mask folder holds the defect "
                            "images); give the folder of the masks")
        return found


def select_categories(
    available: Sequence[str], requested: Sequence[str] | None, where: Path
) -> list[str]:
    """Sorted unique requested categories (all when None); unknown names list the available."""
    if requested is None:
        return sorted(available)
    if isinstance(requested, str):
        requested = [requested]
    wanted = sorted(set(requested))
    if not wanted:
        raise ConfigError("categories: empty list (give None for all categories)")
    unknown = [c for c in wanted if c not in set(available)]
    if unknown:
        raise DataError(
            f"{where}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(unknown)}; available: {', '.join(sorted(available))}"
        )
    return wanted
