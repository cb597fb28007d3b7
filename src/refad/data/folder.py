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
