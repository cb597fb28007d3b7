"""`build_config`: a method's preset with typed fields set, for the CLI and the Python API."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refad.config.overrides import parse_overrides, refuse_flags_set_again, with_fields
from refad.config.presets import preset
from refad.config.schema import RunConfig


def build_config(
    method: str = "rlr",
    data: str | None = None,
    root: str | Path | None = None,
    categories: Sequence[str] | None = None,
    normal_dir: str | Path | None = None,
    anomalous_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    test_normal_dir: str | Path | None = None,
    backbone: str | None = None,
    levels: Sequence[int] | None = None,
    weights: str | Path | None = None,
    image_size: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    per_category: bool | None = None,
    feature_cache: str | Path | None = None,
    val_fraction: float | None = None,
    device: str | None = None,
    overrides: Sequence[str] | None = None,
    base: RunConfig | None = None,
) -> RunConfig:
    """`base` (default: the method's preset) with the given fields set (None keeps the
    base's value: `data` its layout, `device` its device, "auto" in a preset), then
    `overrides` (`section.field=value` strings), validated once. A field given both ways, or
    twice in `overrides`, is refused: one of the two would be dropped without a word."""
    cfg = base if base is not None else preset(method)
    fields: dict[str, Any] = {}
    if device is not None:
        fields["device"] = device
    if data is not None and data != cfg.data.kind:
        fields["data.kind"] = data
    named = {
        "data.root": root, "data.categories": list(categories) if categories else None,
        "data.normal_dir": normal_dir, "data.anomalous_dir": anomalous_dir,
        "data.mask_dir": mask_dir, "data.test_normal_dir": test_normal_dir,
        "data.image_size": image_size, "backbone.name": backbone,
        "backbone.levels": list(levels) if levels else None,
        "backbone.weights": str(weights) if weights is not None else None,
        "train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr,
        "train.seed": seed, "train.feature_cache": feature_cache,
        "train.val_fraction": val_fraction,
        # None keeps the base's mode; False asks for unified (over a per-category config file)
        "train.mode": None if per_category is None else (
            "per-category" if per_category else "unified"),
    }
    given = {k: v for k, v in named.items() if v is not None}
    fields.update(given)
    asked = [*given, *(["device"] if device is not None else []),
             *(["data.kind"] if data is not None else [])]
    refuse_flags_set_again({path: _flag(path) for path in asked}, overrides or ())
    fields.update(parse_overrides(overrides or ()))
    return with_fields(cfg, fields, where="config")


# The parameter (and flag) of a field whose name is not the field's last part.
_PARAMETERS = {"backbone.name": "backbone", "backbone.weights": "weights",
               "train.mode": "per_category", "data.kind": "data"}


def _flag(path: str) -> str:
    """The flag of `refad train` (and parameter of this function) that sets `path`."""
    return "--" + _PARAMETERS.get(path, path.rsplit(".", 1)[-1]).replace("_", "-")
