"""MVTec AD 2 layout (Heckler-Kram et al., 2025): one folder per object (scene)::

    ROOT/OBJECT/train/good/*.png                      normal training images
    ROOT/OBJECT/validation/good/*.png                 normal validation images (calibration)
    ROOT/OBJECT/test_public/good/*.png                normal test images
    ROOT/OBJECT/test_public/bad/*.png                 defective test images
    ROOT/OBJECT/test_public/ground_truth/bad/STEM_mask.png   their masks (0 / 255)
    ROOT/OBJECT/test_private/*.png, test_private_mixed/*.png  no ground truth (`refad predict`)

Why a layout of its own: the validation images calibrate the thresholds (the protocol of the
dataset's paper: SegF1 at a threshold chosen on normal validation images only), and the test
split is `test_public`, whose defects sit in one `bad` folder with masks under
`ground_truth/bad`. Image names carry the lighting condition (`000_regular.png`,
`000_overexposed.png`, ...); refad reads them as plain names. The root may also be a single
object folder. Everything is listed in sorted order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from refad.data.samples import MaskIndex, Sample, list_images, select_categories
from refad.errors import ConfigError, DataError

GOOD, BAD = "good", "bad"
TEST_PUBLIC = "test_public"
PRIVATE_SPLITS = ("test_private", "test_private_mixed")
Split = Literal["train", "validation", "test"]


def _is_object(folder: Path) -> bool:
    return (folder / "train" / GOOD).is_dir()


def _object_dirs(root: Path) -> dict[str, Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root folder not found")
    if _is_object(root):
        return {root.resolve().name: root}
    found = {}
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        if _is_object(d):
            found[d.name] = d
        elif any((d / sub).is_dir() for sub in ("train", "validation", TEST_PUBLIC)):
            raise DataError(f"{d / 'train' / GOOD}: not found (this object has no normal "
                            "training images; refad never drops an object silently)")
    if not found:
        raise DataError(f"{root}: no MVTec AD 2 objects found (expected sub-folders "
                        "OBJECT/train/good, OBJECT/validation/good, OBJECT/test_public)")
    return found


def list_mvtec_ad2_objects(root: Path) -> list[str]:
    """Sorted names of the object folders under ``root``."""
    return sorted(_object_dirs(root))


def _test_samples(obj_dir: Path, name: str) -> list[Sample]:
    test_dir = obj_dir / TEST_PUBLIC
    if not test_dir.is_dir():
        raise DataError(f"{test_dir}: test folder not found (MVTec AD 2 evaluates on "
                        "test_public, the split with ground truth)")
    good, bad = test_dir / GOOD, test_dir / BAD
    if not good.is_dir() and not bad.is_dir():
        raise DataError(f"{test_dir}: holds neither good/ nor bad/")
    samples = [Sample(p, name, 0, None, GOOD) for p in list_images(good)] \
        if good.is_dir() else []
    if bad.is_dir():
        masks = MaskIndex(test_dir / "ground_truth" / BAD)
        samples += [Sample(p, name, 1, masks.require(p), BAD) for p in list_images(bad)]
    return samples


def mvtec_ad2_samples(
    root: Path, split: Split, categories: Sequence[str] | None = None
) -> list[Sample]:
    """Samples of ``split`` ("train", "validation" or "test" = test_public) for the chosen
    objects (all when None)."""
    if split not in ("train", "validation", "test"):
        raise ConfigError(f"split: must be 'train', 'validation' or 'test', got {split!r}")
    dirs = _object_dirs(root)
    samples: list[Sample] = []
    for name in select_categories(list(dirs), categories, Path(root)):
        obj = dirs[name]
        if split == "test":
            samples += _test_samples(obj, name)
            continue
        folder = obj / split / GOOD
        if split == "validation" and not folder.is_dir():
            raise DataError(f"{folder}: not found (MVTec AD 2 calibrates on the normal "
                            "validation images; set train.calibration_images to use others)")
        samples += [Sample(p, name, 0, None, GOOD) for p in list_images(folder)]
    return samples
