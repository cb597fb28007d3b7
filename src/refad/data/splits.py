"""Which images a run uses: the one dispatcher from a `data` config to samples, the grouping
by category, the held-out normals for calibration, and the images to predict on."""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from refad.config.base import describe_validation_error
from refad.config.schema import (
    DataConfig,
    FolderData,
    MVTecAD2Data,
    MVTecData,
    RealIADData,
    VisaData,
)
from refad.data.folder import folder_samples
from refad.data.images import is_image_entry
from refad.data.mvtec import mvtec_samples
from refad.data.mvtec_ad2 import mvtec_ad2_samples
from refad.data.real_iad import real_iad_samples
from refad.data.samples import Sample
from refad.data.visa import visa_samples
from refad.errors import ConfigError, DataError

_DATA_ADAPTER: TypeAdapter[Any] = TypeAdapter(DataConfig)


_LAYOUTS = (MVTecData, VisaData, FolderData, MVTecAD2Data, RealIADData)


def data_config(data: Any) -> Any:
    """A typed `data` section (a mapping is validated, its layout chosen by `kind`)."""
    if isinstance(data, _LAYOUTS):
        return data
    try:
        return _DATA_ADAPTER.validate_python(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "data")) from None


def _path(value: str | None, field: str) -> Path:
    if not value:
        raise ConfigError(f"data.{field} is required for this dataset layout")
    return Path(value).expanduser()


def load_split(
    data: DataConfig | Mapping[str, Any],
    split: Literal["train", "test"],
) -> list[Sample]:
    """Samples of one split for the configured layout (errors name the missing folder/file)."""
    data = data_config(data)
    if isinstance(data, MVTecAD2Data):
        return mvtec_ad2_samples(_path(data.root, "root"), split, data.categories)
    if isinstance(data, RealIADData):
        return real_iad_samples(_path(data.root, "root"), split, data.categories,
                                data.resolution, data.json_dir, data.complete_views)
    if isinstance(data, MVTecData):
        return mvtec_samples(_path(data.root, "root"), split, data.categories)
    if isinstance(data, VisaData):
        csv = Path(data.split_csv) if data.split_csv else None
        return visa_samples(_path(data.root, "root"), split, data.categories, split_csv=csv)
    optional = {
        "anomalous_dir": data.anomalous_dir,
        "mask_dir": data.mask_dir,
        "test_normal_dir": data.test_normal_dir,
    }
    return folder_samples(
        split,
        normal_dir=_path(data.normal_dir, "normal_dir"),
        **{k: Path(v).expanduser() for k, v in optional.items() if v},
    )


def validation_split(data: DataConfig | Mapping[str, Any]) -> list[Sample] | None:
    """The dataset's own normal validation images (MVTec AD 2's validation/good), which
    calibrate a run of that layout; None for layouts without them."""
    data = data_config(data)
    if isinstance(data, MVTecAD2Data):
        return mvtec_ad2_samples(_path(data.root, "root"), "validation", data.categories)
    return None


def by_category(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped by category, categories in sorted order, sample order kept."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.category].append(s)
    return dict(sorted(groups.items()))


def split_validation(
    samples: Sequence[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out a deterministic `fraction` of normal training images of each category: at
    least one, and never all (each category keeps one image to train on)."""
    if fraction <= 0:
        return list(samples), []
    train: list[Sample] = []
    val: list[Sample] = []
    for category, group in by_category(samples).items():
        if len(group) < 2:
            raise DataError(
                f"train.val_fraction: category {category!r} has {len(group)} normal training "
                "image; holding some out needs at least 2 (set train.val_fraction=0)"
            )
        order = list(range(len(group)))
        random.Random(seed).shuffle(order)
        n_val = min(len(group) - 1, max(1, round(fraction * len(group))))
        held = set(order[:n_val])
        for i, s in enumerate(group):
            (val if i in held else train).append(s)
    return train, val


def collect_images(inputs: Sequence[Path | str]) -> list[Path]:
    """The images of `inputs`, each file once (see `find_images`)."""
    return find_images(inputs)[0]


def find_images(inputs: Sequence[Path | str]) -> tuple[list[Path], list[str]]:
    """Files given directly, plus the image entries found recursively in folders (by suffix,
    as the dataset layouts list them), and a note for each file reached again under another
    name. A FIFO or a dangling link named like an image is kept, so that reading it names it
    (`not a regular file`) instead of a silent skip. A file reached twice (given twice, given
    and inside a given folder, or through links) is listed once, where it first appears: one
    file, one result."""
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if is_image_entry(p))
            if not files:
                raise DataError(f"{item}: folder holds no images")
            found.extend(files)
        elif item.exists():  # a regular file, or a FIFO or device its reading refuses
            found.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    first: dict[str, Path] = {}
    unique: list[Path] = []
    notes: list[str] = []
    for path in found:
        key = os.path.realpath(path)  # links resolved: two names of one file are one file
        if key not in first:
            first[key] = path
            unique.append(path)
        elif os.path.abspath(path) != os.path.abspath(first[key]):
            notes.append(f"{path}: the same file as {first[key]}; scored once")
    return unique, notes
