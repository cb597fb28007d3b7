"""Which images a run uses and how they split into trained units (unified or per category)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from refad.config import DataConfig, RunConfig
from refad.data import Sample, folder_samples, mvtec_samples, visa_samples
from refad.errors import ConfigError

UNIFIED = "unified"


def _path(value: str | None, field: str) -> Path:
    if not value:
        raise ConfigError(f"data.{field} is required for this dataset layout")
    return Path(value).expanduser()


def load_split(data: DataConfig, split: Literal["train", "test"]) -> list[Sample]:
    """Samples of one split for the configured layout (errors name the missing folder/file)."""
    if data.kind == "mvtec":
        return mvtec_samples(_path(data.root, "root"), split, data.categories)
    if data.kind == "visa":
        csv = Path(data.split_csv) if data.split_csv else None
        return visa_samples(_path(data.root, "root"), split, data.categories, split_csv=csv)
    opt = {
        "anomalous_dir": data.anomalous_dir,
        "mask_dir": data.mask_dir,
        "test_normal_dir": data.test_normal_dir,
    }
    return folder_samples(
        split,
        normal_dir=_path(data.normal_dir, "normal_dir"),
        **{k: Path(v) for k, v in opt.items() if v},
    )


def group_units(config: RunConfig, samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Unified: one unit with every category. Per-category: one unit per category."""
    if config.train.mode == "unified":
        return {UNIFIED: list(samples)}
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.category].append(s)
    return dict(sorted(groups.items()))


def by_category(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.category].append(s)
    return dict(sorted(groups.items()))


def unit_dir(run_dir: Path, unit: str) -> Path:
    """Folder of a unit's checkpoint: the run folder itself when unified."""
    return Path(run_dir) if unit == UNIFIED else Path(run_dir) / "categories" / unit


def unit_for_category(config: RunConfig, category: str) -> str:
    return UNIFIED if config.train.mode == "unified" else category


def split_validation(
    samples: Sequence[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out a deterministic `fraction` of normal training images of each category."""
    if fraction <= 0:
        return list(samples), []
    import random

    train: list[Sample] = []
    val: list[Sample] = []
    for _, group in by_category(samples).items():
        order = list(range(len(group)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(fraction * len(group))) if len(group) > 1 else 0
        held = set(order[:n_val])
        for i, s in enumerate(group):
            (val if i in held else train).append(s)
    return train, val
