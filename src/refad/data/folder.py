"""Plain folders for users' own data: one folder of normal images, optionally test folders.

Train = the images in ``normal_dir``. Test = ``test_normal_dir`` (label 0) plus ``anomalous_dir``
(label 1, defect = that folder's name, masks from ``mask_dir`` matched by stem). Only the files
directly inside each folder are used, sorted by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from refad.data.samples import MaskIndex, Sample, check_split, list_images
from refad.errors import ConfigError, DataError


def folder_samples(
    split: Literal["train", "test"],
    normal_dir: Path,
    anomalous_dir: Path | None = None,
    mask_dir: Path | None = None,
    test_normal_dir: Path | None = None,
    category: str = "custom",
) -> list[Sample]:
    """Samples of ``split`` from plain folders (see module doc); all of one ``category``."""
    check_split(split)
    if not category:
        raise ConfigError("category: must be a non-empty name")
    check_folders_apart(normal_dir, anomalous_dir, mask_dir, test_normal_dir)
    if split == "train":
        return [Sample(p, category, 0, None, "good") for p in list_images(Path(normal_dir))]

    if test_normal_dir is None and anomalous_dir is None:
        raise ConfigError("test split needs test_normal_dir and/or anomalous_dir")
    samples: list[Sample] = []
    if test_normal_dir is not None:
        samples.extend(
            Sample(p, category, 0, None, "good") for p in list_images(Path(test_normal_dir))
        )
    if anomalous_dir is not None:
        anomalous_dir = Path(anomalous_dir)
        if mask_dir is not None and not Path(mask_dir).is_dir():
            raise DataError(f"{mask_dir}: mask folder not found")
        masks = MaskIndex(Path(mask_dir) if mask_dir is not None else None)
        defect = anomalous_dir.resolve().name or "anomaly"
        samples.extend(
            Sample(p, category, 1, masks.require(p), defect) for p in list_images(anomalous_dir)
        )
    return samples


def check_folders_apart(
    normal_dir: Path,
    anomalous_dir: Path | None,
    mask_dir: Path | None,
    test_normal_dir: Path | None,
) -> None:
    """Test images that are training images, or defect images that are their own masks, give
    metrics that look fine and mean nothing; both are refused, for either split, so that
    training stops before it starts."""
    named = {"data.normal_dir": normal_dir, "data.test_normal_dir": test_normal_dir,
             "data.anomalous_dir": anomalous_dir}
    folders = {k: Path(v) for k, v in named.items() if v is not None}
    if mask_dir is not None and anomalous_dir is not None and \
            Path(mask_dir).resolve() == Path(anomalous_dir).resolve():
        raise ConfigError(f"data.mask_dir: {mask_dir} is the anomalous folder; each defect "
                          "image would be its own mask (give the folder of the masks)")
    seen: dict[Path, str] = {}
    for field, folder in folders.items():
        try:
            images = list_images(folder)
        except DataError:  # the split that reads this folder says what is wrong with it
            continue
        for image in images:
            other = seen.setdefault(image.resolve(), field)
            if other != field:
                raise ConfigError(
                    f"{field}: {image} is also in {other} ({named[other]}); test images must "
                    "not be training images, nor good and defective at once"
                )
