"""Checks on what a run's checkpoint.json and an export's refad-deploy.json record, shared by
both readers so that a run folder and an export refuse the same values.

Both files are JSON that anyone can edit (an export's is sealed, but a foreign writer seals
what it likes). A threshold of 0 called every image anomalous without a word, an inverted
colour range painted every heatmap one colour, a category named without a threshold was
decided at the global one, and a file name with a path read a file outside the folder. Plain
Python (no torch, no pydantic): the torch-free `refad.deploy` imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refad.errors import CheckpointError
from refad.pipeline.defects import MASK_RULES

CALIBRATION_KEYS = ("threshold", "pixel_threshold", "map_floor", "map_ceiling")


def finite_number(value: Any, where: str, optional: bool = False) -> float | None:
    """`value` as a float; None only when `optional`. JSON's 1e999 reads as infinity."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def check_calibration(
    values: Mapping[str, Any], where: str, inherited: Mapping[str, Any] | None = None
) -> None:
    """Scores and maps are reconstruction errors (never negative), so a threshold must be
    above 0; colouring needs a floor below a ceiling at a finite distance. `inherited`: the
    unit's values that a category's own ones override (its colour range may be half its own)."""
    found = {key: finite_number(values.get(key), f"{where}.{key}", optional=True)
             for key in CALIBRATION_KEYS}
    check_mask_rule(values, where)
    for key in ("threshold", "pixel_threshold"):
        if found[key] is not None and found[key] <= 0:
            raise CheckpointError(f"{where}.{key}: must be above 0, got {found[key]!r}")
    outer = inherited or {}
    floor = found["map_floor"] if found["map_floor"] is not None else outer.get("map_floor")
    ceiling = (found["map_ceiling"] if found["map_ceiling"] is not None
               else outer.get("map_ceiling"))
    if found["map_floor"] is None and found["map_ceiling"] is None:
        return  # the unit's own range, checked with the unit
    if floor is not None and ceiling is not None and not (
        floor < ceiling and math.isfinite(ceiling - floor)
    ):
        raise CheckpointError(f"{where}: map_floor {floor!r} and map_ceiling {ceiling!r} are "
                              "no colour range (the floor must be below the ceiling)")


def check_mask_rule(values: Mapping[str, Any], where: str) -> None:
    """How masks are drawn: a known rule, and the peak rule's fraction strictly between 0
    and 1 (0 masks every pixel above the floor, 1 none)."""
    rule = values.get("mask_rule")
    if rule is not None and rule not in MASK_RULES:
        raise CheckpointError(f"{where}.mask_rule: {rule!r} is not one of "
                              f"{', '.join(MASK_RULES)}")
    fraction = finite_number(values.get("mask_peak_fraction"), f"{where}.mask_peak_fraction",
                             optional=True)
    if fraction is not None and not 0 < fraction < 1:
        raise CheckpointError(f"{where}.mask_peak_fraction: must be between 0 and 1, got "
                              f"{fraction!r}")
    if rule == "peak" and fraction is None:
        raise CheckpointError(f"{where}.mask_peak_fraction: missing; the peak mask rule needs it")


def check_categories(categories: Any, where: str, unit: Mapping[str, Any]) -> None:
    """Each category's own calibration. A category is named to be decided at its own
    threshold (`--category` accepts it): one without a threshold is a broken record, never
    quietly decided at the unit's global threshold."""
    if not isinstance(categories, Mapping):
        raise CheckpointError(f"{where}: must be an object")
    for cat, values in categories.items():
        if not isinstance(values, Mapping):
            raise CheckpointError(f"{where}.{cat}: must be an object")
        if values.get("threshold") is None:
            raise CheckpointError(
                f"{where}.{cat}.threshold: missing; a category named without its own threshold "
                "would be decided at the global one (foreign or edited file)"
            )
        check_calibration(values, f"{where}.{cat}", inherited=unit)


def check_file_name(name: Any, where: str, folder: str) -> None:
    """A file the record names lies in its own folder: a path (absolute, `../`, a device
    such as /dev/zero) would be read from elsewhere. `folder` says which ("run", "export")."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "\x00" in name
            or "\\" in name or Path(name).name != name):
        raise CheckpointError(f"{where}: {name!r} is not a file name in the {folder} folder "
                              "(a path would read a file outside it)")
