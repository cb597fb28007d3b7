"""MVTec-AD folder layout: ``CAT/train/good``, ``CAT/test/<defect>``, ``CAT/ground_truth/<defect>``.

Any dataset laid out this way works (MVTec-AD itself, MVTec-like exports, refad's synthetic demo).
A category is a sub-folder of the root that holds ``train/good``; the root may also be a single
category folder itself. Everything is listed in sorted, deterministic order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from refad.data.samples import MaskIndex, Sample, check_split, list_images, select_categories
from refad.errors import DataError

GOOD = "good"


def _category_dirs(root: Path) -> dict[str, Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root folder not found")
    if (root / "train" / GOOD).is_dir():  # the root is one category folder
        return {root.resolve().name: root}
    found = {}
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        if (d / "train" / GOOD).is_dir():
            found[d.name] = d
        elif (d / "train").is_dir() or (d / "test").is_dir():  # a category missing its normals
            raise DataError(f"{d / 'train' / GOOD}: not found (this category has no normal "
                            "training images; refad never drops a category silently)")
    if not found:
        raise DataError(f"{root}: no categories found (expected sub-folders CAT/train/good)")
    return found


def list_mvtec_categories(root: Path) -> list[str]:
    """Sorted names of the category folders under ``root``."""
    return sorted(_category_dirs(root))


def _test_samples(cat_dir: Path, category: str) -> list[Sample]:
    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise DataError(f"{test_dir}: test folder not found")
    defect_dirs = sorted(
        (d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )
    if not defect_dirs:
        raise DataError(f"{test_dir}: test folder holds no sub-folders (expected good/, ...)")
    samples: list[Sample] = []
    for defect_dir in defect_dirs:
        defect = defect_dir.name
        masks = MaskIndex(cat_dir / "ground_truth" / defect)
        for image in list_images(defect_dir):
            if defect == GOOD:
                samples.append(Sample(image, category, 0, masks.lookup(image), GOOD))
            else:
                samples.append(Sample(image, category, 1, masks.require(image), defect))
    return samples


def mvtec_samples(
    root: Path,
    split: Literal["train", "test"],
    categories: Sequence[str] | None = None,
) -> list[Sample]:
    """All samples of ``split`` for the chosen categories (all when None), sorted.

    Train: ``CAT/train/good`` (label 0). Test: ``CAT/test/good`` (label 0, mask only if a
    ``ground_truth/good`` file exists) and every other ``CAT/test/<defect>`` (label 1, mask from
    ``CAT/ground_truth/<defect>`` matched by stem, required).
    """
    check_split(split)
    dirs = _category_dirs(Path(root))
    samples: list[Sample] = []
    for category in select_categories(list(dirs), categories, Path(root)):
        cat_dir = dirs[category]
        if split == "train":
            samples.extend(
                Sample(image, category, 0, None, GOOD)
                for image in list_images(cat_dir / "train" / GOOD)
            )
        else:
            samples.extend(_test_samples(cat_dir, category))
    return samples
