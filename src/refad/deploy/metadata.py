"""The export folder's metadata file: the single source of what a graph needs and means.

Everything a runtime must know travels in ``refad-deploy.json`` beside the graphs: the input
rule (size, mean/std, resize), output names and shapes, thresholds and colouring range per unit
and category, the precision, and the parity figures measured when it was written. Two hashes
make tampering visible instead of silently changing decisions: ``content_sha256`` over the
metadata itself (so a hand-edited threshold is refused; use the per-call override instead) and
the sha256 of every graph file (so a graph from another export is refused).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from refad.atomic import file_sha256, read_json
from refad.errors import CheckpointError, ConfigError
from refad.pipeline.calibration import Calibration
from refad.pipeline.preprocess import RESIZE_RULES
from refad.pipeline.tiled import Tiling
from refad.runs.layout import UNIFIED
from refad.runs.recorded import check_calibration, check_categories, check_file_name, finite_number

METADATA_FILE = "refad-deploy.json"
FORMAT = "refad-deploy"
FORMAT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
MAX_INPUT_SIZE = 2048  # config's MAX_IMAGE_SIZE (not imported: deploy stays free of pydantic)

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "refad_version": str,
    "method": str,
    "mode": str,
    "backbone": dict,
    "input": dict,
    "outputs": dict,
    "graph": dict,
    "units": dict,
    "content_sha256": str,
}


def content_hash(meta: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of every field but ``content_sha256`` itself."""
    body = {k: v for k, v in meta.items() if k != "content_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(meta: dict[str, Any]) -> dict[str, Any]:
    """Return ``meta`` with its ``content_sha256`` filled in."""
    out = dict(meta)
    out["content_sha256"] = content_hash(out)
    return out


def dumps(meta: dict[str, Any]) -> str:
    """The file text (strict JSON: non-finite numbers are refused, not written as NaN)."""
    return json.dumps(meta, indent=2, sort_keys=False, allow_nan=False) + "\n"


def _check_unit(name: str, unit: Any, where: str) -> None:
    if not isinstance(unit, dict):
        raise CheckpointError(f"{where}: units.{name} must be an object")
    files = unit.get("files")
    if not isinstance(files, dict) or not files or not isinstance(unit.get("graph"), str):
        raise CheckpointError(f"{where}: units.{name} lacks its graph file and hashes")
    if unit["graph"] not in files:
        raise CheckpointError(f"{where}: units.{name}.graph {unit['graph']!r} has no sha256")
    for fname in files:  # the rules of a run folder's manifest (refad.runs.recorded)
        check_file_name(fname, f"{where}: units.{name}.files", "export")
    calib = unit.get("calibration")
    if not isinstance(calib, dict):
        raise CheckpointError(f"{where}: units.{name}.calibration must be an object")
    for key in ("map_floor", "map_ceiling"):
        finite_number(calib.get(key), f"{where}: units.{name}.calibration.{key}")
    check_calibration(calib, f"{where}: units.{name}.calibration")
    check_categories(unit.get("categories", {}), f"{where}: units.{name}.categories", calib)


def validate(meta: Any, where: str) -> dict[str, Any]:
    """Check structure, version and the content hash; `where` names the file in errors."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: not a refad export metadata object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a refad export metadata file (format field)")
    for key, kind in _REQUIRED.items():
        if key not in meta:
            raise CheckpointError(f"{where}: missing field {key!r}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise CheckpointError(f"{where}: field {key!r} has the wrong type")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format version {meta['format_version']} is not supported "
            f"(this refad reads {FORMAT_VERSION}); re-export the run"
        )
    if meta["content_sha256"] != content_hash(meta):
        raise CheckpointError(
            f"{where}: edited after export (content hash differs); re-export, or pass "
            "threshold= per call instead of editing the file"
        )
    size = meta["input"].get("size")
    sides = size if isinstance(size, list) and len(size) == 2 else [size]
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sides):
        raise CheckpointError(f"{where}: input.size must be a positive integer or "
                              "[height, width]")
    if meta["input"].get("resize_mode", "stretch") not in RESIZE_RULES:
        raise CheckpointError(f"{where}: input.resize_mode must be one of "
                              f"{', '.join(RESIZE_RULES)}")
    try:  # scored by tiles: the same bounds a run's config has
        Tiling.of(meta["input"].get("tiling"))
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: input.{str(exc).split(chr(10))[0]}") from None
    size = max(sides)
    if size > MAX_INPUT_SIZE:  # images are resized to it before the graph can object
        raise CheckpointError(f"{where}: input.size: {size} is above {MAX_INPUT_SIZE}, the "
                              "largest image size a run is trained at (foreign file?)")
    for key in ("mean", "std"):
        vals = meta["input"].get(key)
        if not isinstance(vals, list) or len(vals) != 3:
            raise CheckpointError(f"{where}: input.{key} must hold 3 numbers")
        for v in vals:
            finite_number(v, f"{where}: input.{key}")
    if any(v <= 0 for v in meta["input"]["std"]):
        raise CheckpointError(f"{where}: input.std must be > 0")
    if meta["graph"].get("format") not in FORMATS:
        raise CheckpointError(f"{where}: graph.format must be one of {', '.join(FORMATS)}")
    if meta["graph"].get("precision") not in PRECISIONS:
        raise CheckpointError(f"{where}: graph.precision must be one of {', '.join(PRECISIONS)}")
    if not meta["units"]:
        raise CheckpointError(f"{where}: no units (graphs) listed")
    for name, unit in meta["units"].items():
        _check_unit(name, unit, where)
    return meta


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """Load and validate an export folder's metadata (one-line CheckpointError otherwise)."""
    folder = Path(folder)
    path = folder / METADATA_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such export folder")
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a refad export (no {METADATA_FILE})")
    return validate(read_json(path, CheckpointError), str(path))


def verify_files(folder: Path, unit_name: str, unit: dict[str, Any]) -> None:
    """Every graph file of a unit exists and matches the sha256 recorded at export."""
    for fname, expected in unit["files"].items():
        path = Path(folder) / fname
        if not path.is_file():
            raise CheckpointError(f"{path}: graph file of unit {unit_name!r} is missing")
        if file_sha256(path) != expected:
            raise CheckpointError(
                f"{path}: sha256 differs from {METADATA_FILE} (graph edited, or copied from "
                "another export)"
            )


def unit_calibration(name: str, unit: dict[str, Any]) -> Calibration:
    """A unit's typed calibration: its `calibration` values and its `categories`' own (the
    unit of a per-category export is its category)."""
    record = {**unit["calibration"], "categories": unit.get("categories") or {}}
    return Calibration.from_record(record, None if name == UNIFIED else name)
